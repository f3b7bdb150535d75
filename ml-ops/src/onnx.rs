//! Just enough of the ONNX protobuf format to describe a model (its inputs and outputs) and to
//! read the attributes of scikit-learn's linear and tree-ensemble operators for the native
//! scorers. The message and field numbers are those of `onnx.proto` (proto2, so repeated
//! numbers may come packed or not; prost reads both).

use prost::Message;

use crate::MlError;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetId>,
}

#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetId {
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(float, repeated, packed = "false", tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, packed = "false", tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    #[prost(int32, optional, tag = "1")]
    pub elem_type: Option<i32>,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// One input or output of a model, as the registry shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type name: `float`, `int64`, `string`, ...
    #[serde(rename = "type")]
    pub elem_type: String,
    /// Dimensions; `None` for a dynamic one (the batch).
    pub shape: Vec<Option<i64>>,
}

/// ONNX `TensorProto.DataType` numbers to names.
fn elem_type_name(t: i32) -> &'static str {
    match t {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        _ => "other",
    }
}

impl TensorInfo {
    fn of(v: &ValueInfoProto) -> TensorInfo {
        let tensor = v.r#type.as_ref().and_then(|t| t.tensor_type.as_ref());
        TensorInfo {
            name: v.name.clone().unwrap_or_default(),
            elem_type: elem_type_name(tensor.and_then(|t| t.elem_type).unwrap_or(0)).to_string(),
            shape: tensor
                .and_then(|t| t.shape.as_ref())
                .map(|s| s.dim.iter().map(|d| d.dim_value.filter(|v| *v > 0)).collect())
                .unwrap_or_default(),
        }
    }
}

/// A decoded model: its graph and a description of its inputs and outputs.
#[derive(Debug, Clone)]
pub struct OnnxModel {
    pub graph: GraphProto,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub producer: String,
}

impl OnnxModel {
    pub fn parse(bytes: &[u8]) -> Result<OnnxModel, MlError> {
        let model = ModelProto::decode(bytes).map_err(|e| MlError::BadModel(format!("not an ONNX model: {e}")))?;
        let graph = model.graph.ok_or_else(|| MlError::BadModel("the ONNX model has no graph".into()))?;
        if graph.node.is_empty() {
            return Err(MlError::BadModel("the ONNX model's graph has no nodes".into()));
        }
        Ok(OnnxModel {
            inputs: graph.input.iter().map(TensorInfo::of).collect(),
            outputs: graph.output.iter().map(TensorInfo::of).collect(),
            producer: model.producer_name.unwrap_or_default(),
            graph,
        })
    }
}

/// Typed access to a node's attributes by name.
pub struct Attrs<'a>(pub &'a NodeProto);

impl Attrs<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.attribute.iter().find(|a| a.name.as_deref() == Some(name))
    }
    pub fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }
    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(|a| a.i)
    }
    pub fn string(&self, name: &str) -> Option<String> {
        self.get(name).and_then(|a| a.s.as_ref()).map(|s| String::from_utf8_lossy(s).into_owned())
    }
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.get(name).map(|a| a.strings.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect()).unwrap_or_default()
    }
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}
