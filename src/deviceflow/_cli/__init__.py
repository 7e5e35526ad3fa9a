"""The parts of the ``deviceflow`` command; the entry point is :mod:`deviceflow.cli`.

- ``_errors``: exit codes, CliError, and the one-line message (with a hint) for every error.
- ``_settings``: every option, read from the command line, the environment and a TOML profile.
- ``_presets``: ``--provider NAME`` -> a ``Provider`` preset with its arguments.
- ``_store``: the default encrypted store, its key file, and the index of signed-in accounts.
- ``_terminal``: what a person sees: the big user code, the QR code, the countdown, questions.
- ``_http``: the transport the commands give the client: ``--debug`` lines and retry notes.
- ``_commands``: token, status, logout, keygen, reset, and which server, client and account a
  command means; ``_login``: login.
- ``_kube``, ``_credential``: the plugins for kubectl (``token --format exec-credential``) and
  git (``credential``); ``_plugin``: how a plugin gets its token.
- ``_fast``: ``token`` for a fresh stored token, without the client or the event loop.
- ``_demo``: ``demo``, a sign-in against the built-in server, shown as login shows it.
- ``_completion``: the bash, zsh and fish completion scripts.
"""
