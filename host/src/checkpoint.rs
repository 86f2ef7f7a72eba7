//! safetensors checkpoints (placeholder: being written).
