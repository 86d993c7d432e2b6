"""jaxcurv: first and second derivatives at scale on JAX.

Jacobians and Hessians when they fit, Hessian-vector and Gauss-Newton-vector products when
they don't, the Krylov methods that run on those products, critical-point and
loss-landscape analysis, and a Hessian-free optimizer for optax.
"""

from jaxcurv.backprop import BackpropResult as BackpropResult
from jaxcurv.backprop import backprop as backprop
from jaxcurv.derivatives import Description as Description
from jaxcurv.derivatives import derivative as derivative
from jaxcurv.derivatives import derivative_table as derivative_table
from jaxcurv.derivatives import describe as describe
from jaxcurv.derivatives import gradient as gradient
from jaxcurv.derivatives import hessian as hessian
from jaxcurv.derivatives import jacobian as jacobian
from jaxcurv.products import CurvatureOperator as CurvatureOperator
from jaxcurv.products import GaussNewtonOperator as GaussNewtonOperator
from jaxcurv.products import HessianOperator as HessianOperator
from jaxcurv.products import ggn_operator as ggn_operator
from jaxcurv.products import ggn_vp as ggn_vp
from jaxcurv.products import hessian_operator as hessian_operator
from jaxcurv.products import hvp as hvp

__version__ = "0.1.0"

__all__ = [
    "BackpropResult",
    "CurvatureOperator",
    "Description",
    "GaussNewtonOperator",
    "HessianOperator",
    "backprop",
    "derivative",
    "derivative_table",
    "describe",
    "ggn_operator",
    "ggn_vp",
    "gradient",
    "hessian",
    "hessian_operator",
    "hvp",
    "jacobian",
]

# Modules written in parallel register themselves below as they land.
try:  # noqa: SIM105
    from jaxcurv.cg import CGInfo as CGInfo
    from jaxcurv.cg import CGStatus as CGStatus
    from jaxcurv.cg import cg as cg

    __all__ += ["CGInfo", "CGStatus", "cg"]
except ImportError:  # pragma: no cover
    pass
