//! Resource requests and sizes: cpus, memory, gpus, gpu_memory, gpu_model.
