"""The Hypothesis search on the model, and what every driver shares with it.

    model_check   the model state machine, its required paths, the helpers the lockstep machine
                  shares (drawing a move, recording a step, a failure as a trace)
    shrink        shrinking a failing model trace (ddmin, deletion with renumbering)
    path_labels   the path labels one step took, for coverage (compiled; every driver counts them)
    profiles      the Hypothesis profiles (`dev`, `ci`, `thorough`) and which one loads
    databases     example databases: a directory or a Redis server, keyed per machine
"""
