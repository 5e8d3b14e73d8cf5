"""An implementation in a child process: whatever it does there, the harness survives it.

    child   the child's side: loads the library, serves the adapter protocol over a pipe
    pool    the parent's side: `ChildPool`, a crash or a hang as a failing step, exit statuses
"""
