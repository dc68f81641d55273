"""Cutover: fence writes on the moving keys, drain the stream to the fence, flip routing
to the targets, and keep reverse replication running so that rollback stays possible.

``steps`` names the steps (live and dry-run), ``orchestrator`` runs cutover and rollback
over them, ``waves`` picks canary waves, ``gates`` checks what must hold before anything
is fenced, ``reverse`` sets up the reverse streams, ``sequences`` moves sequences past,
``complete`` is the point of no return, ``schedule`` serves cron jobs.
"""
