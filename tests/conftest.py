"""Shared test set-up: one torch thread (small nets; the two CI cores may be shared) and a hypothesis profile.

Set HYPOTHESIS_PROFILE=ci for derandomized (reproducible) runs; the default profile explores new examples
on every run. Neither profile has a deadline: one example builds a network and runs fvcore on it.
"""
import os
import signal

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)  # small nets: one thread is as fast and immune to oversubscription

# A test run started in the background by a script (`cmd &`, nohup) inherits an ignored SIGINT, and so would every
# CLI it starts: Python then never raises KeyboardInterrupt and the Ctrl-C tests could not test anything. Give this
# process Python's own handler; processes it starts then get the default disposition back at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("dev", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
# CI (.ci/run sets HYPOTHESIS_PROFILE=ci): the same examples on every run, so a red CI is reproducible locally with
# HYPOTHESIS_PROFILE=ci; tests that build networks set their own (smaller) max_examples.
settings.register_profile("ci", parent=settings.get_profile("dev"), derandomize=True, max_examples=100,
                          database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
