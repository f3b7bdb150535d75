//! Text templates with `{field}` placeholders (Redis keys, alert annotations): parsed once,
//! then filled from a row without re-parsing. `{{` and `}}` stand for literal braces.

use crate::schema::Schema;
use crate::value::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    Text(String),
    /// A field name; bound to a row position by [`Template::bind`].
    Field(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub segments: Vec<Segment>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut segments = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err(format!("unclosed `{{` in \"{text}\" (write `{{{{` for a literal brace)")),
                        }
                    }
                    let name = name.trim().to_string();
                    if name.is_empty() {
                        return Err(format!("empty `{{}}` in \"{text}\" (expected a field name, e.g. {{tenant_id}})"));
                    }
                    if !lit.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut lit)));
                    }
                    segments.push(Segment::Field(name));
                }
                '}' => return Err(format!("unmatched `}}` in \"{text}\" (write `}}}}` for a literal brace)")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            segments.push(Segment::Text(lit));
        }
        Ok(Template { segments })
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| if let Segment::Field(f) = s { Some(f.as_str()) } else { None })
    }

    /// Binds field names to positions in rows of `schema` (positions in the row as the
    /// schema's `positions()` order, i.e. index into the projected output row).
    pub fn bind(&self, names: &[&str]) -> Result<BoundTemplate, String> {
        let mut parts = Vec::new();
        for s in &self.segments {
            match s {
                Segment::Text(t) => parts.push(Part::Text(t.clone())),
                Segment::Field(f) => match names.iter().position(|n| n == f) {
                    Some(p) => parts.push(Part::Field(p)),
                    None => return Err(format!("unknown field `{f}` in template (expected one of: {})", names.join(", "))),
                },
            }
        }
        Ok(BoundTemplate { parts })
    }

    /// Checks every placeholder names a field of `schema`.
    pub fn check(&self, schema: &Schema) -> Result<(), String> {
        let names = schema.names();
        self.bind(&names).map(|_| ())
    }
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Field(usize),
}

/// A template whose fields are row positions.
#[derive(Debug, Clone)]
pub struct BoundTemplate {
    parts: Vec<Part>,
}

impl BoundTemplate {
    /// Appends the filled template to `out` (cleared first): timestamps as RFC 3339, nulls as
    /// the empty string.
    pub fn render_into(&self, row: &[Value], out: &mut String) {
        use std::fmt::Write;
        out.clear();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field(i) => match row.get(*i) {
                    Some(Value::Str(s)) => out.push_str(s),
                    Some(Value::Null) | None => {}
                    Some(Value::Ts(t)) => out.push_str(&crate::time::format_rfc3339(*t)),
                    Some(v) => {
                        let _ = write!(out, "{v}");
                    }
                },
            }
        }
    }

    pub fn render(&self, row: &[Value]) -> String {
        let mut s = String::new();
        self.render_into(row, &mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_fields_and_keep_escaped_braces() {
        let t = Template::parse("tf:{tenant}:{{x}}:{n}").expect("parse");
        assert_eq!(t.fields().collect::<Vec<_>>(), ["tenant", "n"]);
        let b = t.bind(&["n", "tenant"]).expect("bind");
        assert_eq!(b.render(&[Value::Int(7), Value::Str("acme".into())]), "tf:acme:{x}:7");
        assert!(Template::parse("a{b").is_err());
        assert!(Template::parse("a}b").is_err());
        assert!(Template::parse("a{}b").is_err());
        assert!(t.bind(&["n"]).is_err());
    }
}
