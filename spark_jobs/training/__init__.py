"""Training: one loop and one training state, run under every strategy.

    inputs.py       TrainInputs: what training reads (resolved by the train step)
    state.py        Position, StepsDone and TrainingRun: checkpoints (with the model config),
                    resume, evaluation, steps.jsonl / epochs.csv, the run's result
    loop.py         run_training (the one loop) and the per-process step of single / ddp
    evaluation.py   scoring: the periodic sample (summed across DDP ranks) and the full validation text
    checkpoints.py  the checkpoint format: safetensors + JSON, verified, newest valid wins
    optim.py        the optimizer and the learning-rate schedule
    muon.py         MuonAdamW: Muon for the hidden matrices, AdamW for the rest
    weight_average.py  the weights' moving average (training.ema_decay), the model training returns
    averaging.py    parameter averaging's arithmetic (pack, unpack, average weights and Adam state)
    collective_averaging.py  parameter averaging's rounds by all-reduce, inside ranks
    strategies/     single | ddp | parameter_averaging, a typed registry

May import: spark_jobs.common, data, models, reporting (metric writers). Never the steps.
"""
