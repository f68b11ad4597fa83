from fastlv.nn.gmm import DiagGaussianMixture, GaussianMixture, GMMHead
from fastlv.nn.wavenet import TCN, TCNOutput, WaveNetBlock
