//! The root package holds no code of its own: it owns the end-to-end tests in
//! `tests/` (real gRPC on 127.0.0.1:0) and the criterion benches in
//! `benches/`, which use every crate of the workspace.
