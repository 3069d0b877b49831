//! The ONNX Runtime (`ort`) backend of sieve. Not written yet: no code here runs a model.
