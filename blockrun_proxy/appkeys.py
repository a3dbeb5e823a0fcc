"""The keys of what an app holds (one module, so handlers and the app share them without an
import cycle). The payment core is one key: the session, payer, quotes, gateway and the
rest are its fields (core.py)."""

from __future__ import annotations

from aiohttp import web

from blockrun_proxy.config import Settings
from blockrun_proxy.core import PaymentCore
from blockrun_proxy.exchange import Exchange
from blockrun_proxy.guard import Guard
from blockrun_proxy.limits import Admission, Limits
from blockrun_proxy.metrics import Metrics
from blockrun_proxy.spend.routes import BalanceSlot

ADMISSION_KEY = web.AppKey("admission", Admission)
# The wallet balance, for /readyz and the spend page (spend/routes.py).
BALANCE_KEY = web.AppKey("balance", BalanceSlot)
CORE_KEY = web.AppKey("core", PaymentCore)
GUARD_KEY = web.AppKey("guard", Guard)
LIMITS_KEY = web.AppKey("limits", Limits)
METRICS_KEY = web.AppKey("metrics", Metrics)
SETTINGS_KEY = web.AppKey("settings", Settings)
EXCHANGE_KEY = web.RequestKey("exchange", Exchange)
