"""The recurrent models of the papers, each a small nn.Module on the fused ops (see each class)."""
from fastlv.nn.models.rnn import FlatRNN, FRNN
from fastlv.nn.models.srnn import FlatSRNN, SimplifiedSRNN
from fastlv.nn.models.zforcing import ZForcingSRNN

__all__ = ["FRNN", "FlatRNN", "SimplifiedSRNN", "FlatSRNN", "ZForcingSRNN"]
