"""`distillctl search`: Optuna trials over config values, each one a normal distill run."""
