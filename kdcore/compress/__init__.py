"""From a finished run's student to deployable models: export, prune, quantise, measure.

    export      a model as ONNX (torch.onnx's exporter) or as a kdcore checkpoint (.pt) that rebuilds itself
    prune       global magnitude pruning to a sparsity, structured channel/neuron pruning (torch-pruning)
    recover     distillation from the run's teacher after pruning, pruned weights held at zero
    quantize    post-training int8 in ONNX Runtime, calibrated on training inputs
    measure     test accuracy, parameters, bytes on disk, latency and throughput in PyTorch and ONNX Runtime
    report      the deployment report of a run: every variant, measured (`python -m kdcore compress`)
    options     what a report is asked for, and the names of its artefacts (torch-free)
    checks      bad input refused before any work: the run, the output path, the format (torch-free)
    jobs        a report computed in a background process, for the app (torch-free)

Nothing is imported here: `options`, `checks` and `jobs` load without torch, the rest import it.
"""
