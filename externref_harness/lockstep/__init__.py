"""The lockstep: the model and an implementation driven step by step, compared after each step.

    runner         driving a trace, the Hypothesis lockstep machine, shrinking, replay
    projection     the observable projection both sides are compared through
    memory_checks  the named memory checks and their levels (conformant, strict)
    deadline       a time limit on each step of an in-process implementation
    targets        what a run drives: the Python port or a native library, and the config it fixes
"""
