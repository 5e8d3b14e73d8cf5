"""An implementation in a child process: whatever it does there, the harness survives it.

wire      the frames across the boundary: plain data as JSON, sizes bounded, fields checked
process   a confined child: its own process group (killed whole), resource limits, its output
child     the child's side: loads the library, serves the adapter protocol over a pipe
describe  a library loaded and described in a child, refused in one line if it misbehaves
pool      the parent's side: `ChildPool`, a crash or a hang as a failing step, the time budget
"""
