"""Test-wide settings."""

import torch

# The models under test are small: torch's intra-op threads cost more than they save, and on a shared
# 2-core machine they contend with other processes (measured 10x slower Newton refits with 2 threads).
torch.set_num_threads(1)
