//! The libtorch (`tch`) backend of sieve. Not written yet: no code here runs a model.
