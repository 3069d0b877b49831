//! A small builder of ONNX graphs: named values, nodes with attributes, initializers from
//! host weights, and serialization of the finished model.

use prost::Message as _;

use crate::onnx::{
    AttributeProto, CONTRIB, Dimension, GraphProto, IR_VERSION, ModelProto, NodeProto, OPSET, OperatorSetIdProto,
    TensorProto, TensorShapeProto, TypeProto, TypeProtoTensor, UINT8, ValueInfoProto, attribute_type,
};

pub use crate::onnx::{FLOAT, INT64};

/// An attribute value of a node.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
    /// A one-element float tensor (e.g. `Constant`'s `value`).
    Scalar(f32),
}

/// One dimension of a declared input or output.
#[derive(Debug, Clone)]
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// An ONNX graph under construction. Value names are unique: [`Graph::node`] names its
/// outputs after the node's running number.
#[derive(Debug, Default)]
pub struct Graph {
    proto: GraphProto,
    next: usize,
}

fn value_info(name: &str, elem_type: i32, dims: Option<&[Dim]>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => Dimension { dim_value: Some(*n as i64), dim_param: None },
                Dim::Named(s) => Dimension { dim_value: None, dim_param: Some((*s).to_string()) },
            })
            .collect(),
    });
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto { tensor_type: Some(TypeProtoTensor { elem_type, shape }) }),
    }
}

impl Graph {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Self { proto: GraphProto { name: name.to_string(), ..GraphProto::default() }, next: 0 }
    }

    /// Declares a graph input; `dims: None` leaves its rank open.
    pub fn input(&mut self, name: &str, elem_type: i32, dims: Option<&[Dim]>) -> String {
        self.proto.input.push(value_info(name, elem_type, dims));
        name.to_string()
    }

    /// Declares `value` as a graph output.
    pub fn output(&mut self, value: &str, elem_type: i32) {
        self.proto.output.push(value_info(value, elem_type, None));
    }

    /// A float initializer of `shape` holding `data` (row-major).
    pub fn weight(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        let raw_data = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.proto.initializer.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: FLOAT,
            name: name.to_string(),
            raw_data,
        });
        name.to_string()
    }

    /// A uint8 initializer of `shape` holding `data` (packed quantized weights).
    pub fn bytes(&mut self, name: &str, shape: &[usize], data: Vec<u8>) -> String {
        self.proto.initializer.push(TensorProto {
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: UINT8,
            name: name.to_string(),
            raw_data: data,
        });
        name.to_string()
    }

    /// A 1-D int64 initializer (shapes, axes, indices).
    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = format!("c{}", self.next);
        self.next += 1;
        self.proto.initializer.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: INT64,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        });
        name
    }

    /// A float scalar initializer.
    pub fn scalar(&mut self, value: f32) -> String {
        let name = format!("c{}", self.next);
        self.next += 1;
        self.proto.initializer.push(TensorProto {
            dims: vec![],
            data_type: FLOAT,
            name: name.clone(),
            raw_data: value.to_le_bytes().to_vec(),
        });
        name
    }

    /// Adds a node with one output and returns that output's name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.node_n(op, inputs, attrs, 1).remove(0)
    }

    /// Adds a node of ONNX Runtime's contrib domain (e.g. `MatMulNBits`) with one output.
    pub fn contrib(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.node(op, inputs, attrs);
        if let Some(node) = self.proto.node.last_mut() {
            node.domain = CONTRIB.0.to_string();
        }
        out
    }

    /// Adds a node whose one output is called `name` (for graph outputs).
    pub fn named(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.push(op, inputs, attrs, vec![name.to_string()]).remove(0)
    }

    /// Adds a node with `outputs` outputs and returns their names.
    pub fn node_n(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], outputs: usize) -> Vec<String> {
        let id = self.next;
        let out: Vec<String> = (0..outputs).map(|i| format!("{}{id}_{i}", op.to_lowercase())).collect();
        self.push(op, inputs, attrs, out)
    }

    fn push(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], out: Vec<String>) -> Vec<String> {
        let id = self.next;
        self.next += 1;
        let attribute = attrs
            .iter()
            .map(|(name, a)| {
                let mut p = AttributeProto { name: (*name).to_string(), ..AttributeProto::default() };
                match a {
                    Attr::Int(i) => (p.i, p.r#type) = (*i, attribute_type::INT),
                    Attr::Ints(v) => (p.ints, p.r#type) = (v.clone(), attribute_type::INTS),
                    Attr::Float(f) => (p.f, p.r#type) = (*f, attribute_type::FLOAT),
                    Attr::Str(s) => (p.s, p.r#type) = (s.as_bytes().to_vec(), attribute_type::STRING),
                    Attr::Scalar(f) => {
                        p.t = Some(TensorProto {
                            dims: vec![],
                            data_type: FLOAT,
                            name: String::new(),
                            raw_data: f.to_le_bytes().to_vec(),
                        });
                        p.r#type = attribute_type::TENSOR;
                    }
                }
                p
            })
            .collect();
        self.proto.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: out.clone(),
            name: format!("n{id}"),
            op_type: op.to_string(),
            attribute,
            domain: String::new(),
        });
        out
    }

    /// Nodes of type `op` (for tests).
    #[cfg(test)]
    pub fn count(&self, op: &str) -> usize {
        self.proto.node.iter().filter(|n| n.op_type == op).count()
    }

    /// Bytes of the initializers of element type `elem_type` (for tests).
    #[cfg(test)]
    pub fn initializer_bytes(&self, elem_type: i32) -> usize {
        self.proto.initializer.iter().filter(|t| t.data_type == elem_type).map(|t| t.raw_data.len()).sum()
    }

    /// The finished model, serialized.
    pub fn into_model_bytes(self) -> Vec<u8> {
        ModelProto {
            ir_version: IR_VERSION,
            producer_name: "sieve".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(self.proto),
            opset_import: vec![
                OperatorSetIdProto { domain: String::new(), version: OPSET },
                OperatorSetIdProto { domain: CONTRIB.0.into(), version: CONTRIB.1 },
            ],
        }
        .encode_to_vec()
    }
}
