import os

from hypothesis import settings

# Property tests: no per-example deadline (a shared 2-core CI machine is slow and noisy).
settings.register_profile("ci", deadline=None, max_examples=60)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
