"""Hierarchical RNN / SRNN of Dai et al. 2019 (Sec. 5.2, Eq. 13-14): a high-level recurrence over frames
and an autoregressive low-level model within each frame, g_t,i = f_low(x_t,<i, h_t). The low levels
(:class:`fastlv.nn.LowLevelLSTM`, :class:`fastlv.nn.LowLevelMADE`) live in :mod:`fastlv.nn.made`."""
from __future__ import annotations

from fastlv.nn.made import hierarchical_output
from fastlv.nn.models.rnn import FRNN
from fastlv.nn.models.srnn import SimplifiedSRNN


class HierRNN(FRNN):
    """RNN-hier (Dai et al. Sec. 5.2, Eq. 13): an LSTM over frames, h_t = LSTM(x_{t-1}, h_{t-1}), and
    p(x_t | x_<t) = prod_i p(x_t,i | x_<t, x_t,<i) from a low-level LSTM (``low_level="lstm"``, width
    ``d_low``, default ``d_rnn``) or MADE (``"made"``: ``made_layers`` x ``d_low`` units, or ``d_low``
    units per element with ``per_dimension``) on h_t. Exact log-likelihood."""
    CONFIGS = {
        # re-examination code, TIMIT RNN-hier d_rnn 700: 17,275,736 parameters
        "timit": dict(frame_size=200, d_rnn=700),
        # re-examination code, Perm-TIMIT rnn_hier_nade (d_rnn 512, d_emb 256, 3 low layers, d_nade 64)
        "perm_timit": dict(frame_size=200, d_emb=256, d_rnn=512, low_level="made", d_low=64, made_layers=3,
                           per_dimension=True),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 700, n_layers: int = 1, output: str = "gmm",
                 n_components: int = 20, low_level: str = "lstm", d_low: int | None = None, made_layers: int = 2,
                 per_dimension: bool = False):
        head = hierarchical_output(low_level, frame_size, d_rnn, d_emb=d_emb, d_low=d_low or d_rnn,
                                   made_layers=made_layers, per_dimension=per_dimension, distribution=output,
                                   n_components=n_components)
        super().__init__(frame_size, d_emb, d_rnn, n_layers, head=head)


class HierSRNN(SimplifiedSRNN):
    """SRNN-hier (Dai et al. Sec. 5.2, Eq. 14): the simplified SRNN's h_t (Eq. 3) under the same low level,
    p(x_t | z_<=t, x_<t) = prod_i p(x_t,i | z_<=t, x_<t, x_t,<i); one Gaussian per element by default."""
    CONFIGS = {
        # re-examination code, TIMIT SRNN-hier d_rnn 660: 17,248,352 parameters
        "timit": dict(frame_size=200, d_rnn=660),
        # re-examination code, Perm-TIMIT srnn_hier_nade (d_rnn 536, d_emb / d_mlp / d_lat 256, 3 low layers,
        # d_nade 64)
        "perm_timit": dict(frame_size=200, d_emb=256, d_rnn=536, d_mlp=256, d_latent=256, low_level="made", d_low=64,
                           made_layers=3, per_dimension=True),
    }

    def __init__(self, frame_size: int, d_emb: int = 512, d_rnn: int = 660, d_mlp: int = 512, d_latent: int = 256,
                 output: str = "gmm", n_components: int = 1, param_clamp: float | None = 8.0, low_level: str = "lstm",
                 d_low: int | None = None, made_layers: int = 2, per_dimension: bool = False):
        head = hierarchical_output(low_level, frame_size, d_rnn, d_emb=d_emb, d_low=d_low or d_rnn,
                                   made_layers=made_layers, per_dimension=per_dimension, distribution=output,
                                   n_components=n_components)
        super().__init__(frame_size, d_emb, d_rnn, d_mlp, d_latent, param_clamp=param_clamp, head=head)
