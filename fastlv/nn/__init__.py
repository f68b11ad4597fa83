"""Modules and models built on fastlv.ops."""
from fastlv.nn.base import SequenceModel, SequenceOutput
from fastlv.nn.gmm import DiagGaussianMixture, GaussianMixture, GMMHead
from fastlv.nn.heads import ObservationHead, observation_head
from fastlv.nn.models import (DeltaRNN, FlatRNN, FlatSRNN, FraccaroSRNN, FRNN, SimplifiedSRNN, SISRNN, STORN, VRNN,
                              ZForcingSRNN)
