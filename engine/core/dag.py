"""The few walks the pipeline makes over its steps' graph, on plain dicts.

networkx did these four before; importing it took 0.15 s of every command's start
(0.7 s with the 2 cores loaded), more than the walks over a dozen steps ever will.
A graph here is `successors`: per node, in insertion order, the nodes using it.
"""

from __future__ import annotations


def topological_order(successors: dict[str, list[str]]) -> list[str]:
    """Nodes generation by generation (those with no unvisited predecessor), each in
    insertion order: the order networkx's `topological_sort` gives the same graph."""
    indegree = dict.fromkeys(successors, 0)
    for children in successors.values():
        for child in children:
            indegree[child] += 1
    order: list[str] = []
    generation = [node for node, d in indegree.items() if d == 0]
    while generation:
        order.extend(generation)
        following = []
        for node in generation:
            for child in successors[node]:
                indegree[child] -= 1
                if indegree[child] == 0:
                    following.append(child)
        generation = following
    return order


def find_cycle(successors: dict[str, list[str]]) -> list[str]:
    """The nodes along one cycle (a -> b -> ... back to a), or [] when there is none."""
    if len(topological_order(successors)) == len(successors):
        return []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = 1
        path.append(node)
        for child in successors[node]:
            if state.get(child) == 1:
                return path[path.index(child) :]
            if child not in state:
                found = visit(child, path)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in successors:
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return []


def ancestors(successors: dict[str, list[str]], name: str) -> set[str]:
    """Every node with a path to `name`."""
    predecessors: dict[str, list[str]] = {node: [] for node in successors}
    for node, children in successors.items():
        for child in children:
            predecessors[child].append(node)
    seen: set[str] = set()
    todo = list(predecessors.get(name, []))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(predecessors[node])
    return seen
