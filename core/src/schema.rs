//! Ordered, named, typed fields of a row, and where each one sits in the physical row.
//!
//! A projection (`select`) narrows what a step can see without moving values, so a field's
//! position in the row need not equal its index in the schema.

use foldhash::HashMap;

use crate::value::DataType;

#[derive(Clone, Debug, Default)]
pub struct Schema {
    fields: Vec<(String, DataType)>,
    positions: Vec<usize>,
    index: HashMap<String, usize>,
}

impl Schema {
    /// A schema whose fields sit at positions 0, 1, 2, ...
    pub fn new(fields: Vec<(String, DataType)>) -> Schema {
        let mut s = Schema::default();
        for (i, (name, ty)) in fields.into_iter().enumerate() {
            s.push_at(name, ty, i);
        }
        s
    }

    /// Adds (or replaces) a field stored at row position `pos`.
    pub fn push_at(&mut self, name: String, ty: DataType, pos: usize) {
        if let Some(&i) = self.index.get(&name) {
            self.fields[i].1 = ty;
            self.positions[i] = pos;
            return;
        }
        self.index.insert(name.clone(), self.fields.len());
        self.fields.push((name, ty));
        self.positions.push(pos);
    }

    /// The row position and type of a field.
    pub fn lookup(&self, name: &str) -> Option<(usize, DataType)> {
        self.index.get(name).map(|&i| (self.positions[i], self.fields[i].1))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn fields(&self) -> &[(String, DataType)] {
        &self.fields
    }

    /// Row positions of the fields, in schema order.
    pub fn positions(&self) -> &[usize] {
        &self.positions
    }

    pub fn names(&self) -> Vec<&str> {
        self.fields.iter().map(|(n, _)| n.as_str()).collect()
    }
}
