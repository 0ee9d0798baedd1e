"""One module per Ray job (describe, preprocess, train, evaluate, tune, ...).

Each is thin — parse the config, call into :mod:`pipeline` — and runs both as
``python -m stages.<name> --config FILE`` (the form ``ray job submit`` uses) and as
``dferclip <name> --config FILE``.
"""

__all__: list[str] = []
