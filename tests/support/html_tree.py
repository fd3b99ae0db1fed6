"""A page parsed into a tree of elements (stdlib ``html.parser``), strict about nesting,
so tests can read a page's structure exactly.

Holds:
  Node      an element: tag, attributes, children (elements and text).
  parse()   a page's tree; fails on a wrongly closed or unclosed element.
"""

from __future__ import annotations

from html.parser import HTMLParser

__all__ = ["Node", "parse"]


class Node:
    def __init__(self, tag: str, attrs: dict) -> None:
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(child if isinstance(child, str) else child.text() for child in self.children)

    def find_all(self, tag: str, *, class_: str | None = None) -> list[Node]:
        """Every element ``tag`` below this one (of class ``class_`` if given), in page order."""
        found = []
        for child in self.children:
            if isinstance(child, Node):
                if child.tag == tag and (class_ is None or class_ in child.attrs.get("class", "").split()):
                    found.append(child)
                found.extend(child.find_all(tag, class_=class_))
        return found

    def find(self, tag: str, *, class_: str | None = None) -> Node:
        """The one element ``tag`` (of class ``class_``) below this one; fails if not exactly one."""
        (node,) = self.find_all(tag, class_=class_)
        return node

    def descendants(self) -> list[Node]:
        nodes = []
        for child in self.children:
            if isinstance(child, Node):
                nodes.extend([child, *child.descendants()])
        return nodes


class _TreeBuilder(HTMLParser):
    _VOID = {"meta", "link", "br", "img", "source", "hr", "input"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._open = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self._open[-1].children.append(node)
        if tag not in self._VOID:
            self._open.append(node)

    def handle_endtag(self, tag):
        assert self._open[-1].tag == tag, f"</{tag}> closes <{self._open[-1].tag}>"
        self._open.pop()

    def handle_data(self, data):
        self._open[-1].children.append(data)


def parse(page: str) -> Node:
    """The tree of ``page``."""
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    assert [node.tag for node in builder._open] == ["#document"], "unclosed elements"
    return builder.root
