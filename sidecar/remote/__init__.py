"""Training on another machine, below `sidecar.training`: the provider interface (`provider.py`) and its two
implementations (`vast.py`: a GPU rented on vast.ai through its SDK; `ssh.py`: a machine the artist already
has), the SSH shell both give (`shell.py`), choosing an offer and estimating (`plan.py`), what is put on the
machine (`machine.py`), what is kept to re-attach and count the money (`state.py`), the `[remote.*]`
settings and the request's `remote` object. The run itself is `sidecar.training.remote`.
"""
