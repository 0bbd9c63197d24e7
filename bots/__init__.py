"""Retouch's Telegram bot (front end 2). It reaches the core only through ``tools.service``'s
Editor (plus ``tools.models``, ``tools.errors``, ``tools.config`` and the store's migration
runner); its own data lives in its own tables, its settings in its own section.

    telegram.py    builds and runs the Application (polling, webhook); token-free logs
    app.py         the wiring: handlers registered, parts built at start and taken down
    state.py       the Runtime: the parts the handlers reach
    commands.py    /start /help /functions /vendor /settings /status /cancel /history
    edits.py       edits from photos, albums and replies
    buttons.py     one handler per inline button
    menus.py       the /vendor and /settings menus and changing a setting
    replies.py     replying, errors the user can fix, the error handler
    captions.py    caption → function, prompt and parameters (pure)
    albums.py      collects an album's separate updates into one edit
    tracking.py    status messages and exactly-once delivery of results
    sending.py     sending a task's results as photos, albums or files
    rendering.py   status texts, task captions, the Cancel button (pure)
    access.py      allow-list gate (every update), strangers' refusals, exact per-user limits
    inbox.py       every update written down before Telegram forgets it
    retry.py       429 / network retries for every Bot API call
    lengths.py     Telegram's text, caption and alert limits: every call's text cut to fit
    metrics.py     updates and deliveries counted (in tools.telemetry's registry, served
                   on ``telegram.metrics_port``)
    storage.py     the bot's tables: chat ↔ task, sent results, user settings, inbox
    migrations.py  the bot's numbered schema steps (m003, m005)
    settings.py    the ``[telegram]`` settings section (entry point ``retouch.settings``)
    __main__.py    ``retouch-bot`` / ``python -m bots``
"""
