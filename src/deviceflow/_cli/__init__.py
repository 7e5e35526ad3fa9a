"""The parts of the ``deviceflow`` command; the entry point is :mod:`deviceflow.cli`.

- ``_errors``: exit codes, CliError, and the one-line message (with a hint) for every error.
- ``_settings``: every option, read from the command line, the environment and a TOML profile.
- ``_presets``: ``--provider NAME`` -> a ``Provider`` preset with its arguments.
- ``_store``: the default encrypted store, its key file, and the index of signed-in accounts.
- ``_terminal``: what a person sees: the big user code, the QR code, the countdown.
- ``_commands``: login, token, status, logout, keygen.
- ``_kube``, ``_credential``: the plugins for kubectl (``token --format exec-credential``) and
  git (``credential``); ``_plugin``: how a plugin gets its token.
"""
