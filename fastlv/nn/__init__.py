from fastlv.nn.gmm import DiagGaussianMixture, GaussianMixture, GMMHead
from fastlv.nn.made import (MADE, ElementDistribution, HierarchicalOutput, LowLevelLSTM, MaskedLinear,
                            PerDimensionLinear, hidden_degrees, input_degrees, made_mask)
