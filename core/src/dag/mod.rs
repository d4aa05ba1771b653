//! The DAG file (TOML): its serde model, parsing with source spans, and validation.
