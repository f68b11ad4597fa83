"""Modules and models built on fastlv.ops."""
from fastlv.nn.base import SequenceModel, SequenceOutput
from fastlv.nn.gmm import DiagGaussianMixture, GaussianMixture, GMMHead
from fastlv.nn.heads import ObservationHead, observation_head
from fastlv.nn.latent import DiagGaussianLatent, gaussian_head
from fastlv.nn.made import (MADE, ElementDistribution, HierarchicalOutput, LowLevelLSTM, LowLevelMADE, MaskedLinear,
                            PerDimensionLinear, hidden_degrees, input_degrees, made_mask)
from fastlv.nn.models import (DeltaRNN, FlatRNN, FlatSRNN, FraccaroSRNN, FRNN, HierRNN, HierSRNN, SimplifiedSRNN,
                              SISRNN, STCN, STCNDense, STORN, VRNN, WaveNet, WaveNetDense, ZForcingSRNN)
from fastlv.nn.wavenet import TCN, TCNOutput, WaveNetBlock
