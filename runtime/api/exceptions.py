"""Ray's exception names and hierarchy, and the mapping from kernel errors to them.

Every error that ``get`` (or ``wait``, ``put``...) raises about a task, an actor
or an object derives from ``RayError``. A task whose user code raised becomes a
``RayTaskError`` holding the original exception (``cause``) and the traceback
text from the worker; ``as_instanceof_cause()`` turns it into an instance of a
class that derives from both ``RayTaskError`` and the cause's class, so

    try:
        shoal.get(ref)
    except ZeroDivisionError:
        ...

catches a task that divided by zero, just as it does under Ray.

Every class keeps its constructor arguments in ``args`` (or defines
``__reduce__``), so each one survives pickling: a task that lets an
``ObjectLostError`` escape hands it, pickled, to its caller.

``error_for(result)`` turns an ``ObjectResult`` carrying a kernel ``ObjectError``
into the exception ``get`` raises. Messages say what happened, to what (object
id, task name) and what to do.
"""

from __future__ import annotations

import pickle
import threading
from collections import OrderedDict
from typing import Any

from shoal.kernel.core_worker.protocol import ObjectResult
from shoal.kernel.messages import Address
from shoal.kernel.task_spec import producing_task

__all__ = [
    "ActorDiedError",
    "ActorUnavailableError",
    "GetTimeoutError",
    "NodeDiedError",
    "ObjectFetchTimedOutError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectStoreFullError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "TaskCancelledError",
    "TaskUnschedulableError",
    "WorkerCrashedError",
    "error_for",
]

DUAL_CLASSES_MAX = 256  # cached RayTaskError(<cause class>) classes, oldest dropped first


class RayError(Exception):
    """Base of every error shoal raises about a task, an actor or an object."""


class _MessageError(RayError):
    """A ``RayError`` whose only argument is its message (with a default)."""

    default_message = ""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args and self.args[0] else self.default_message


# --- task errors -------------------------------------------------------------


class RayTaskError(RayError):
    """A task's user code raised; ``cause`` is the exception it raised.

    Args:
        function_name: the task's name (``module.function`` unless renamed).
        traceback_str: the traceback text, as formatted in the worker.
        cause: the exception the user code raised (``None`` if it was lost).
    """

    def __init__(
        self,
        function_name: str,
        traceback_str: str,
        cause: BaseException | None = None,
        proctitle: str | None = None,
        pid: int | None = None,
        ip: str | None = None,
        actor_repr: str | None = None,
        actor_id: str | None = None,
    ) -> None:
        super().__init__(function_name, traceback_str, cause, proctitle, pid, ip,
                         actor_repr, actor_id)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.proctitle = proctitle
        self.pid = pid
        self.ip = ip
        self.actor_repr = actor_repr
        self.actor_id = actor_id

    def __str__(self) -> str:
        cause = self.cause
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "an exception"
        head = f"task {self.function_name} failed: it raised {what}"
        text = self.traceback_str.rstrip()
        return f"{head}\n\n{text}" if text else head

    def as_instanceof_cause(self) -> RayTaskError:
        """Returns this error as an instance of both ``RayTaskError`` and the cause's class.

        Falls back to ``self`` when there is no cause, when the cause is a shoal
        error itself, or when its class cannot be subclassed or instantiated
        that way (a layout conflict, a metaclass, a ``__new__`` with required
        arguments, a ``__init_subclass__`` that refuses).
        """
        cause = self.cause
        if cause is None:
            return self
        cause_cls = type(cause)
        if issubclass(RayTaskError, cause_cls) or issubclass(cause_cls, RayError):
            return self
        dual = _dual_class(cause_cls)
        if dual is None:
            return self
        try:
            return dual(self)  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - the cause's __new__ refuses our arguments
            return self


def _rebuild_dual(function_name: str, traceback_str: str, cause: BaseException | None,
                  *rest: Any) -> RayTaskError:
    return RayTaskError(function_name, traceback_str, cause, *rest).as_instanceof_cause()


def _dual_init(self: Any, error: RayTaskError) -> None:
    self.__dict__.update(error.__dict__)
    self.args = error.cause.args if error.cause is not None else ()


def _dual_getattr(self: Any, name: str) -> Any:
    cause = self.__dict__.get("cause")
    if cause is None or name.startswith("__"):
        raise AttributeError(name)
    return getattr(cause, name)


def _dual_reduce(self: Any) -> tuple[Any, ...]:
    return (_rebuild_dual, (self.function_name, self.traceback_str, self.cause, self.proctitle,
                            self.pid, self.ip, self.actor_repr, self.actor_id))


_duals: OrderedDict[type, type | None] = OrderedDict()
_duals_lock = threading.Lock()


def _dual_class(cause_cls: type) -> type | None:
    """``RayTaskError(<cause class>)``, built once per cause class; None if impossible."""
    with _duals_lock:
        if cause_cls in _duals:
            return _duals[cause_cls]
    name = f"RayTaskError({cause_cls.__name__})"
    namespace = {
        "__init__": _dual_init,
        "__getattr__": _dual_getattr,
        "__reduce__": _dual_reduce,
        "__str__": RayTaskError.__str__,
        "__module__": RayTaskError.__module__,
        "__qualname__": name,
        "__doc__": f"A task error that is also a {cause_cls.__name__}.",
    }
    dual: type | None
    try:
        dual = type(name, (RayTaskError, cause_cls), namespace)
    except Exception:  # noqa: BLE001 - layout conflict, metaclass conflict, refusing __init_subclass__
        dual = None
    with _duals_lock:
        _duals[cause_cls] = dual
        while len(_duals) > DUAL_CLASSES_MAX:
            _duals.popitem(last=False)
    return dual


class TaskCancelledError(RayError):
    """The task was cancelled with ``cancel()`` before it finished."""

    def __init__(self, task_id: str | None = None, error_message: str | None = None) -> None:
        super().__init__(task_id, error_message)
        self.task_id = task_id
        self.error_message = error_message

    def __str__(self) -> str:
        if self.error_message:
            return self.error_message
        return f"Task: {self.task_id} was cancelled."


class WorkerCrashedError(_MessageError):
    default_message = (
        "The worker died unexpectedly while executing this task; shoal retries such "
        "tasks up to max_retries times. Check the node's logs for why the worker died "
        "(out of memory, a crash in native code, a killed process).")


class NodeDiedError(_MessageError):
    default_message = "The node running this task died. Check the node's logs."


class TaskUnschedulableError(RayError):
    """The task can never be scheduled (e.g. no node has the resources it asks for)."""

    def __init__(self, error_message: str = "") -> None:
        super().__init__(error_message)
        self.error_message = error_message

    def __str__(self) -> str:
        return f"The task is not schedulable: {self.error_message}"


class RaySystemError(RayError):
    """shoal itself failed (not the user's code)."""

    def __init__(self, client_exc: object, traceback_str: str | None = None) -> None:
        super().__init__(client_exc, traceback_str)
        self.client_exc = client_exc
        self.traceback_str = traceback_str

    def __str__(self) -> str:
        text = f"System error: {self.client_exc}"
        return f"{text}\ntraceback: {self.traceback_str}" if self.traceback_str else text


class ObjectStoreFullError(_MessageError):
    default_message = (
        "The object store is full: the object does not fit even after evicting and "
        "spilling what can be. Free references you no longer need, or give the node "
        "more object store memory.")


class OutOfMemoryError(_MessageError):
    default_message = (
        "The task was killed because its node ran out of memory. Ask for more memory "
        "(the memory= option) so fewer such tasks share a node, or use less per task.")


class PendingCallsLimitExceeded(_MessageError):
    default_message = (
        "The actor has too many pending calls (max_pending_calls). Wait for some to "
        "finish before submitting more.")


class GetTimeoutError(RayError, TimeoutError):
    """``get`` (or a wait for an object) timed out; also a ``TimeoutError``."""


# --- actor errors ------------------------------------------------------------


class RayActorError(RayError):
    """The actor died (or cannot be reached) before or while running the method."""

    def __init__(self, error_message: str = "", actor_id: str | None = None) -> None:
        super().__init__(error_message, actor_id)
        self.error_message = error_message
        self.actor_id = actor_id

    def __str__(self) -> str:
        if self.error_message:
            return self.error_message
        actor = f"The actor {self.actor_id}" if self.actor_id else "The actor"
        return f"{actor} died unexpectedly before finishing this task."


class ActorDiedError(RayActorError):
    """The actor is dead (it crashed, was killed, or ran out of restarts).

    ``cause`` is the constructor's ``RayTaskError`` when the actor died because
    its ``__init__`` raised, else None.
    """

    def __init__(self, error_message: str = "", actor_id: str | None = None,
                 cause: BaseException | None = None) -> None:
        super().__init__(error_message, actor_id)
        self.args = (error_message, actor_id, cause)
        self.cause = cause


class ActorUnavailableError(RayActorError):
    """The actor cannot be reached right now (restarting, or its node is unreachable)."""


# --- object errors -----------------------------------------------------------


class ObjectLostError(RayError):
    """Every copy of the object is gone and it could not be rebuilt.

    Args:
        object_ref_hex: the object's id.
        owner_address: the address of its owner, as text.
        call_site: where the object was created, if known.
        reason: what the kernel said about why.
    """

    headline = "Object {id} is lost: every copy is gone and it could not be rebuilt"
    advice = (
        "Objects are rebuilt from lineage when the task that created them may be retried: "
        "keep max_retries > 0 for tasks whose results must survive node failures.")

    def __init__(self, object_ref_hex: str = "", owner_address: str = "", call_site: str = "",
                 reason: str = "") -> None:
        super().__init__(object_ref_hex, owner_address, call_site, reason)
        self.object_ref_hex = object_ref_hex
        self.owner_address = owner_address
        self.call_site = call_site
        self.reason = reason

    def __str__(self) -> str:
        text = self.headline.format(id=self.object_ref_hex, owner=self.owner_address or "?")
        if self.reason:
            text += f" ({self.reason})"
        text += ". " + self.advice
        if self.call_site:
            text += f"\nThe object was created at: {self.call_site}"
        return text


class OwnerDiedError(ObjectLostError):
    headline = "Object {id} can no longer be reached: its owner {owner} died"
    advice = (
        "An object is owned by the process that created it (with .remote() or put()); "
        "keep that process alive while others use the object, or create it in the driver.")


class ObjectReconstructionFailedError(ObjectLostError):
    headline = "Object {id} was lost and rebuilding it from its lineage failed"
    advice = "Check why the task that creates it failed when it was re-run."


class ObjectFetchTimedOutError(ObjectLostError):
    headline = "Fetching object {id} from the node that holds it timed out"
    advice = "Check the network between the nodes, and whether the holding node is overloaded."


# --- kernel ObjectError -> exception -------------------------------------------


def error_for(result: ObjectResult, owner: Address | None = None) -> BaseException:
    """The exception that ``get`` raises for an object that failed.

    Args:
        result: an outcome whose ``error`` is set.
        owner: the object's owner, if known, for the message.

    Returns:
        The matching ``RayError``; for ``task_error`` the ``RayTaskError`` that the
        worker pickled (call ``as_instanceof_cause()`` on it before raising).

    Raises:
        ValueError: ``result`` holds a value, not an error.
    """
    error = result.error
    if error is None:
        raise ValueError(f"object {result.object_id} has a value, not an error")
    oid = str(result.object_id)
    message = error.message
    owner_text = str(owner) if owner is not None else ""
    match error.kind:
        case "task_error":
            return _task_error(oid, message, error.data)
        case "worker_crashed":
            return WorkerCrashedError(
                f"The worker running the task that creates object {oid} died unexpectedly"
                f"{_detail(message)}. shoal retries such tasks up to max_retries times (default"
                " 3); raise max_retries, or find why the worker died (out of memory, a crash"
                " in native code, a killed process).")
        case "task_cancelled":
            task_id = producing_task(result.object_id)
            task = f"task {task_id}" if task_id else "task"
            return TaskCancelledError(
                task_id, f"The {task} that creates object {oid} was cancelled{_detail(message)}.")
        case "object_lost":
            return ObjectLostError(oid, owner_text, "", message)
        case "owner_died":
            return OwnerDiedError(oid, owner_text, "", message)
        case "get_timeout":
            return GetTimeoutError(
                f"Get timed out: object {oid} is not ready{_detail(message)}. Raise the "
                "timeout, or use shoal.wait() to take the objects that are ready.")
        case "node_died":
            return NodeDiedError(
                f"The node running the task that creates object {oid} died{_detail(message)}."
                " The task is retried up to max_retries times; check that node's logs.")
        case "actor_died":
            return _actor_died(oid, message, error.data)
        case "actor_unavailable":
            return ActorUnavailableError(
                f"The actor that was to create object {oid} cannot be reached{_detail(message)}."
                " Retry later, or set max_task_retries to retry calls automatically.")
        case "pending_calls_exceeded":
            return PendingCallsLimitExceeded(message or None)  # type: ignore[arg-type]
        case "infeasible":
            return TaskUnschedulableError(
                f"the task that creates object {oid} can never run{_detail(message)}. "
                "No node has (or can have) the resources it asks for: lower num_cpus, "
                "num_gpus, memory or custom resources, or add nodes that have them.")
    return RaySystemError(
        f"object {oid} failed with an unknown error kind {error.kind!r}{_detail(message)}")


def _actor_died(oid: str, message: str, data: bytes) -> BaseException:
    cause: BaseException | None = None
    if data:
        try:
            loaded = pickle.loads(data)
        except Exception:  # noqa: BLE001 - the message still says what happened
            loaded = None
        if isinstance(loaded, RayTaskError):
            loaded = loaded.as_instanceof_cause()  # except ValueError catches error.cause
        cause = loaded if isinstance(loaded, BaseException) else None
    text = message or f"The actor that was to create object {oid} died."
    if cause is not None and isinstance(cause, RayTaskError):
        text += "\n\n" + str(cause)
    return ActorDiedError(text, None, cause)


def _detail(message: str) -> str:
    return f": {message}" if message else ""


def _task_error(oid: str, message: str, data: bytes) -> BaseException:
    if data:
        try:
            loaded = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported
            return RaySystemError(
                f"the task that creates object {oid} failed ({message or 'no message'}), and "
                f"its exception could not be unpickled here: {type(exc).__name__}: {exc}. "
                "Make sure the exception's class can be imported where get() runs.")
        if isinstance(loaded, BaseException):
            return loaded
    return RayTaskError(message or f"the task that creates object {oid}", "", None)
