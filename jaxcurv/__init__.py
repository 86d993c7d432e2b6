"""jaxcurv: first and second derivatives at scale on JAX.

Jacobians and Hessians when they fit, Hessian-vector and Gauss-Newton-vector products when
they don't, the Krylov methods that run on those products, critical-point and
loss-landscape analysis, and a Hessian-free optimizer for optax.
"""

from jaxcurv.backprop import BackpropResult as BackpropResult
from jaxcurv.backprop import backprop as backprop
from jaxcurv.blocks import BlockCurvature as BlockCurvature
from jaxcurv.blocks import block_curvature as block_curvature
from jaxcurv.cg import CGInfo as CGInfo
from jaxcurv.cg import CGStatus as CGStatus
from jaxcurv.cg import cg as cg
from jaxcurv.cg import cg_status_message as cg_status_message
from jaxcurv.critical_points import CriticalPoint as CriticalPoint
from jaxcurv.critical_points import classify_critical_point as classify_critical_point
from jaxcurv.density import SpectralDensity as SpectralDensity
from jaxcurv.density import spectral_density as spectral_density
from jaxcurv.density import trace_function as trace_function
from jaxcurv.derivatives import Description as Description
from jaxcurv.derivatives import derivative as derivative
from jaxcurv.derivatives import derivative_table as derivative_table
from jaxcurv.derivatives import describe as describe
from jaxcurv.derivatives import gradient as gradient
from jaxcurv.derivatives import hessian as hessian
from jaxcurv.derivatives import jacobian as jacobian
from jaxcurv.determinism import DeterminismReport as DeterminismReport
from jaxcurv.determinism import check_determinism as check_determinism
from jaxcurv.directions import linear_interpolation as linear_interpolation
from jaxcurv.directions import random_direction as random_direction
from jaxcurv.eigensolvers import EigenResult as EigenResult
from jaxcurv.eigensolvers import PowerIterationResult as PowerIterationResult
from jaxcurv.eigensolvers import eigenvalues as eigenvalues
from jaxcurv.eigensolvers import power_iteration as power_iteration
from jaxcurv.fisher import FisherOperator as FisherOperator
from jaxcurv.fisher import fisher_operator as fisher_operator
from jaxcurv.hessian_free import HessianFreeState as HessianFreeState
from jaxcurv.hessian_free import hessian_free as hessian_free
from jaxcurv.kfac import KFACLayer as KFACLayer
from jaxcurv.kfac import KFACPreconditioner as KFACPreconditioner
from jaxcurv.kfac import kfac_preconditioner as kfac_preconditioner
from jaxcurv.landscape import Landscape as Landscape
from jaxcurv.landscape import LossSlices as LossSlices
from jaxcurv.landscape import analyze_landscape as analyze_landscape
from jaxcurv.landscape import loss_slices as loss_slices
from jaxcurv.least_squares import LeastSquaresResult as LeastSquaresResult
from jaxcurv.least_squares import LeastSquaresStatus as LeastSquaresStatus
from jaxcurv.least_squares import least_squares as least_squares
from jaxcurv.losses import softmax_cross_entropy as softmax_cross_entropy
from jaxcurv.micro_batch import MicroBatchOperator as MicroBatchOperator
from jaxcurv.model_and_loss import ModelAndLoss as ModelAndLoss
from jaxcurv.products import CurvatureOperator as CurvatureOperator
from jaxcurv.products import GaussNewtonOperator as GaussNewtonOperator
from jaxcurv.products import HessianOperator as HessianOperator
from jaxcurv.products import ggn_operator as ggn_operator
from jaxcurv.products import ggn_vp as ggn_vp
from jaxcurv.products import hessian_operator as hessian_operator
from jaxcurv.products import hvp as hvp
from jaxcurv.spectral_preconditioner import SpectralPreconditioner as SpectralPreconditioner
from jaxcurv.spectral_preconditioner import spectral_preconditioner as spectral_preconditioner
from jaxcurv.streaming import StreamingOperator as StreamingOperator
from jaxcurv.streaming import streaming_operator as streaming_operator
from jaxcurv.trace_estimators import DiagonalEstimate as DiagonalEstimate
from jaxcurv.trace_estimators import TraceEstimate as TraceEstimate
from jaxcurv.trace_estimators import hutchinson_diagonal as hutchinson_diagonal
from jaxcurv.trace_estimators import hutchinson_trace as hutchinson_trace

__version__ = "0.1.0"

__all__ = [
    "BackpropResult",
    "BlockCurvature",
    "CGInfo",
    "CGStatus",
    "CriticalPoint",
    "CurvatureOperator",
    "Description",
    "DeterminismReport",
    "DiagonalEstimate",
    "EigenResult",
    "FisherOperator",
    "GaussNewtonOperator",
    "HessianFreeState",
    "HessianOperator",
    "KFACLayer",
    "KFACPreconditioner",
    "Landscape",
    "LeastSquaresResult",
    "LeastSquaresStatus",
    "LossSlices",
    "MicroBatchOperator",
    "ModelAndLoss",
    "PowerIterationResult",
    "SpectralDensity",
    "SpectralPreconditioner",
    "StreamingOperator",
    "TraceEstimate",
    "analyze_landscape",
    "backprop",
    "block_curvature",
    "cg",
    "cg_status_message",
    "check_determinism",
    "classify_critical_point",
    "derivative",
    "derivative_table",
    "describe",
    "eigenvalues",
    "fisher_operator",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_free",
    "hessian_operator",
    "hutchinson_diagonal",
    "hutchinson_trace",
    "hvp",
    "jacobian",
    "kfac_preconditioner",
    "least_squares",
    "linear_interpolation",
    "loss_slices",
    "power_iteration",
    "random_direction",
    "softmax_cross_entropy",
    "spectral_density",
    "spectral_preconditioner",
    "streaming_operator",
    "trace_function",
]
