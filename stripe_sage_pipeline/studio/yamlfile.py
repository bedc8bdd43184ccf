"""mapping.yaml round trip with ruamel.yaml: a draft (plain data) written back keeping comments and order.

The studio edits the mapping as plain JSON-like data. Saving merges that data into the document as
it was read: a changed value is replaced in place (its end-of-line comment stays), a removed key is
deleted, a new key is appended to its section; everything else -- comments, key order, quoting of
account codes -- is kept as finance wrote it.
"""

from __future__ import annotations

import difflib
import io
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken


def _yaml() -> YAML:
    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def load_document(text: str) -> CommentedMap:
    """Parse mapping.yaml keeping comments, order and quoting."""
    doc = _yaml().load(text)
    if not isinstance(doc, CommentedMap):
        raise ValueError("the mapping must be a YAML mapping")
    return doc


def dump_document(doc: Any) -> str:
    """The document as YAML text."""
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def plain(value: Any) -> Any:
    """A ruamel node as plain Python data (dicts, lists, str/int/bool)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def _scalar(old: Any, new: Any) -> Any:
    """A new scalar in the style of the old one: account codes stay quoted strings."""
    if isinstance(new, str) and (isinstance(old, str) and type(old) is not str or new.isdigit()):
        # Quoted in the file (or all digits, which YAML would otherwise read as a number).
        return DoubleQuotedScalarString(new)
    return new


def _is_block(node: Any) -> bool:
    return isinstance(node, CommentedMap | CommentedSeq) and not node.fa.flow_style() and len(node) > 0


def _tail_slot(node: Any) -> tuple[list, int] | None:
    """The comment slot after a block collection's last element (descending into a block last value)."""
    if not _is_block(node):
        return None
    if isinstance(node, CommentedMap):
        last = list(node)[-1]
        if _is_block(node[last]):
            return _tail_slot(node[last])
        return node.ca.items.setdefault(last, [None, None, None, None]), 2
    last_i = len(node) - 1
    if _is_block(node[last_i]):
        return _tail_slot(node[last_i])
    return node.ca.items.setdefault(last_i, [None, None]), 0


def _take_tail(node: Any) -> str:
    """Detach what follows the last element's line (blank lines, the next section's comments)."""
    slot = _tail_slot(node)
    if slot is None:
        return ""
    items, i = slot
    tok = items[i]
    if tok is None or not isinstance(tok, CommentToken):
        return ""
    eol, _, rest = tok.value.partition("\n")
    if eol.strip():
        tok.value = eol + "\n"
    else:
        items[i] = None
    return rest


def _put_tail(node: Any, rest: str) -> None:
    """Attach detached trailing text after the (new) last element."""
    if not rest:
        return
    slot = _tail_slot(node)
    if slot is None:
        return
    items, i = slot
    tok = items[i]
    if isinstance(tok, CommentToken):
        tok.value = tok.value.rstrip("\n") + "\n" + rest
    else:
        items[i] = CommentToken("\n" + rest, CommentMark(0), None)


def merge(node: Any, new: Any) -> Any:
    """`new` merged into `node` in place where both are mappings or sequences; returns the result."""
    if isinstance(node, CommentedMap | CommentedSeq) and isinstance(new, dict | list) and _is_block(node):
        tail = _take_tail(node)
        out = _merge(node, new)
        _put_tail(out, tail)
        return out
    return _merge(node, new)


def _merge(node: Any, new: Any) -> Any:
    if isinstance(node, CommentedMap) and isinstance(new, dict):
        for key in [k for k in node if str(k) not in new]:
            del node[key]
        keys = {str(k): k for k in node}
        for k, v in new.items():
            if k in keys:
                old_key = keys[k]
                node[old_key] = merge(node[old_key], v)
            else:
                node[_scalar(None, k) if k.isdigit() else k] = merge(None, v)
        return node
    if isinstance(node, CommentedSeq) and isinstance(new, list):
        for i, v in enumerate(new):
            if i < len(node):
                node[i] = merge(node[i], v)
            else:
                item = merge(None, v)
                if isinstance(item, CommentedMap):
                    item.fa.set_block_style()
                node.append(item)
        del node[len(new) :]
        return node
    if isinstance(new, dict):
        out = CommentedMap()
        for k, v in new.items():
            out[_scalar(None, k) if k.isdigit() else k] = merge(None, v)
        if len(new) <= 3 and all(not isinstance(v, dict | list) for v in new.values()):
            out.fa.set_flow_style()  # small leaf maps read best inline, like `{clearing: "1150", bank: "1010"}`
        return out
    if isinstance(new, list):
        seq = CommentedSeq(merge(None, v) for v in new)
        for v in seq:
            if isinstance(v, CommentedMap):
                v.fa.set_block_style()  # an item of a list of mappings reads as a block, like the others
        if all(not isinstance(v, dict | list) for v in new):
            seq.fa.set_flow_style()
        return seq
    if node == new and type(node) is not bool and not isinstance(new, bool):
        return node
    return _scalar(node, new)


def apply_draft(text: str, draft: dict[str, Any]) -> str:
    """mapping.yaml text with `draft` merged in (comments and order kept)."""
    doc = load_document(text)
    merge(doc, draft)
    return dump_document(doc)


def unified_diff(old: str, new: str, name: str = "mapping.yaml") -> str:
    """A unified diff of two versions of the file (empty when equal)."""
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), fromfile=f"a/{name}", tofile=f"b/{name}"
        )
    )
