"""Auto-tuning: an Optuna study over a search space whose trials are ordinary KD Lab runs (issue 16).

    space     `KEY=SPEC` parsing, the checks that refuse a space before anything is recorded, sampling
    study     create, drive (batches of trials trained as stacked groups; the best confirmed on seeds), extend
    pruning   the worker's per-trial reports to the pruner at the rung epochs, and the stop it may order
    report    what a study found, read from the store alone (the CLI's output, the Tune page's data)
    verdict   tuned vs default vs the student alone on the test split, over seeds

Nothing here imports torch, and only `study` and `pruning` import Optuna (lazily, when they drive or prune).
"""
