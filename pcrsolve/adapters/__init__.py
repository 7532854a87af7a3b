"""Adapters: models and integrators turned into Markov recurrences for :func:`pcrsolve.solve`.

Each adapter supplies a step function vectorized over steps, and where cheap an analytic
Jacobian (or a JVP), so that users bring models rather than step functions. The modules
are imported on demand; importing :mod:`pcrsolve` imports none of them.

========================================  ===================================================
module                                    what it adapts
========================================  ===================================================
:mod:`pcrsolve.adapters.torch`            stacks of equal-width layers (MLP, residual blocks);
                                          :class:`~pcrsolve.adapters.torch.ParallelSequential`
:mod:`pcrsolve.adapters.rnn`              ``nn.GRUCell``, ``nn.LSTMCell``, ``nn.RNNCell`` over time
:mod:`pcrsolve.adapters.diffusion`        DDPM and DDIM samplers with any denoiser
:mod:`pcrsolve.adapters.ode`              explicit Euler and RK4 integrators, parallel in time
``pcrsolve.adapters.torch_distributed``   a stack of blocks split over torch.distributed
                                          ranks (``DistributedParallelSequential``)
========================================  ===================================================
"""
