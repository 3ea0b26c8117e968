"""The one hierarchy of domain errors. The CLI maps them to exit codes (`exit_code`), HTTP APIs to statuses."""

from __future__ import annotations


class ShadowlineError(Exception):
    """Base of every error Shadowline raises on purpose; the message is meant for the user."""

    exit_code = 1
    http_status = 500


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) stopped a command that cleans up after itself; exit code 128 + signal.

    A BaseException like KeyboardInterrupt, so no `except Exception` on the way swallows it and every cleanup
    (`finally`, `except BaseException`) between the signal and the CLI runs."""

    http_status = 503

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class ConfigError(ShadowlineError):
    """A configuration file or option is invalid; the message names the key path."""

    exit_code = 2
    http_status = 400


class ModelRejected(ShadowlineError):
    """A model cannot be used: not ONNX, unsupported op or opset, shapes that do not fit."""

    exit_code = 3
    http_status = 422


class LabelError(ModelRejected):
    """Labels do not fit the model output, or are not unique."""

    exit_code = 19


class BundleError(ShadowlineError):
    """A bundle is malformed, incomplete or does not match its manifest."""

    exit_code = 4
    http_status = 422


class SignatureError(BundleError):
    """A bundle is unsigned (under a trust store), signed by an unknown key, or its signature is wrong."""

    exit_code = 5
    http_status = 403


class ImageError(ShadowlineError):
    """An image cannot be used: empty, corrupt, truncated, not an image, or over the pixel limit."""

    exit_code = 6
    http_status = 422


class ParityError(ShadowlineError):
    """An artifact (FP16 ONNX, Core ML package, TensorRT engine) disagrees with the bundle's reference outputs."""

    exit_code = 7
    http_status = 422


class BackendUnavailable(ShadowlineError):
    """A backend's library is missing or cannot run here; the message says what to install."""

    exit_code = 8
    http_status = 503


class ConversionError(ShadowlineError):
    """A model cannot be converted (unsupported op or attribute); the message names the op, node and attribute."""

    exit_code = 9
    http_status = 422


class NotFound(ShadowlineError):
    """What was asked for does not exist (a bundle, release, device, rollout, alert); the message names it."""

    exit_code = 10
    http_status = 404


class Conflict(ShadowlineError):
    """The request conflicts with the current state: a rollout running on the group, a promotion the gate refused,
    an alert acknowledged already; the message says which."""

    exit_code = 11
    http_status = 409


class BuildCancelled(ShadowlineError):
    """An engine build was stopped (a cancel event or its time limit) before TensorRT finished."""

    exit_code = 12
    http_status = 409


class TooLarge(ShadowlineError):
    """A request body or an upload is over its limit; the message says the limit."""

    exit_code = 13
    http_status = 413


class AccessDenied(ShadowlineError):
    """No token, an unknown token, or a token without the role the request needs."""

    exit_code = 14
    http_status = 403


class ServiceError(ShadowlineError):
    """A service a command talks to (the fleet API) cannot be reached or failed; the message says which and why."""

    exit_code = 15
    http_status = 502


class Unauthorized(AccessDenied):
    """No credential, or one nobody issued (an unknown or revoked token, a wrong password): 401, where a valid
    credential without the right role is an AccessDenied (403)."""

    exit_code = 16
    http_status = 401


class StorageFull(ShadowlineError):
    """A store is at its disk budget (e.g. the fleet's uploaded images); the caller should retry later."""

    exit_code = 18
    http_status = 507


class StoreError(ShadowlineError):
    """The fleet store cannot be used as it is: its schema is behind or ahead of this version, it is not ours,
    or it cannot be reached."""

    exit_code = 17
    http_status = 503
