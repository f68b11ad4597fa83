"""The recurrent models of the papers, each a small nn.Module on the fused ops (see each class)."""
from fastlv.nn.models.fraccaro import FraccaroSRNN
from fastlv.nn.models.hier import HierRNN, HierSRNN
from fastlv.nn.models.rnn import DeltaRNN, FlatRNN, FRNN
from fastlv.nn.models.sisrnn import SISRNN
from fastlv.nn.models.srnn import FlatSRNN, SimplifiedSRNN
from fastlv.nn.models.stcn import STCN, STCNDense, WaveNet, WaveNetDense
from fastlv.nn.models.vrnn import STORN, VRNN
from fastlv.nn.models.zforcing import ZForcingSRNN

__all__ = ["FRNN", "FlatRNN", "DeltaRNN", "SimplifiedSRNN", "FlatSRNN", "ZForcingSRNN", "FraccaroSRNN", "VRNN",
           "STORN", "SISRNN", "HierRNN", "HierSRNN", "STCN", "STCNDense", "WaveNet", "WaveNetDense"]
