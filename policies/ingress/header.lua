-- The shipped header-mode routing script: OpenSandbox's ingress semantics,
-- nothing more.
--
-- The sandbox and port come from OpenSandbox-Ingress-To ("<id>-<port>", or
-- the signed "<id>-<port>-<expires>-<signature>"), else the deprecated
-- OPEN-SANDBOX-INGRESS, else the first label of Host. The request goes to
-- the sandbox's backend with its path and query untouched. All the work
-- happens in sandgate.ingress.route (JIT-compiled): route.shipped makes the
-- hooks (route, load, selftest). Until load, no sandbox is known (404).
return require("sandgate.ingress.route").shipped("header")
