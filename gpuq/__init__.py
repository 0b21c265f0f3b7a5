"""gpuq's command line and local tooling (the server side lives in api/, tasks/, gpu_worker/)."""
