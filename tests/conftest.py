import os

from hypothesis import settings

# Property tests: no per-example deadline (a shared 2-core CI machine is slow and noisy).
# derandomize: the same examples on every run, so a red CI is reproducible and never a coin toss.
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True)
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
