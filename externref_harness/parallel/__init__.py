"""The parallel check: reference counting on real threads, judged against the model.

    program           parallel programs: prefix, threads, derived epilogue; generation, shrinking,
                      parallel traces
    run               running a program on real threads (`native/threads/driver.c`)
    linearizability   the verdict on a history: direct checks, then the linearizability search
    check             the check's loop, shrinking and failure reports
    child             the check in a child process: a crash or a hang names the program it ran
    replay            `replay PARALLEL-TRACE --runs N`
"""
