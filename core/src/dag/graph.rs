//! The task graph (petgraph): cycle detection with a readable path,
//! topological layers and ancestor sets. Edges run upstream → downstream.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};

use super::DagSpec;

/// A graph over task ids; `deps` maps each task to its (existing, non-self)
/// upstream tasks.
pub(crate) struct TaskGraph<'a> {
    graph: DiGraph<&'a str, ()>,
}

impl<'a> TaskGraph<'a> {
    pub(crate) fn new<I, D>(deps: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, D)> + Clone,
        D: IntoIterator<Item = &'a str>,
    {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        for (task, _) in deps.clone() {
            index.insert(task, graph.add_node(task));
        }
        for (task, ups) in deps {
            for up in ups {
                if let (Some(&from), Some(&to)) = (index.get(up), index.get(task)) {
                    graph.add_edge(from, to, ());
                }
            }
        }
        TaskGraph { graph }
    }

    /// One cycle per strongly connected component, each as a path that
    /// starts and ends at the component's smallest task id, following run
    /// order (`a -> b` means b depends on a). Sorted by that first id.
    pub(crate) fn cycles(&self) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = tarjan_scc(&self.graph)
            .into_iter()
            .filter(|scc| scc.len() > 1)
            .filter_map(|scc| self.cycle_in(&scc))
            .collect();
        out.sort();
        out
    }

    fn cycle_in(&self, scc: &[NodeIndex]) -> Option<Vec<String>> {
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let start = *scc.iter().min_by_key(|n| self.graph[**n])?;
        // Shortest way round: BFS from start back to start inside the SCC.
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self.graph.neighbors(node).collect();
            next.sort_by_key(|n| self.graph[*n]);
            for n in next {
                if n == start {
                    let mut path = vec![self.graph[start].to_owned()];
                    let mut cur = node;
                    while cur != start {
                        path.push(self.graph[cur].to_owned());
                        cur = *parent.get(&cur)?;
                    }
                    path[1..].reverse();
                    path.push(self.graph[start].to_owned());
                    return Some(path);
                }
                if members.contains(&n) && !parent.contains_key(&n) {
                    parent.insert(n, node);
                    queue.push_back(n);
                }
            }
        }
        None
    }

    /// Ids grouped by longest distance from a root; `None` if there is a cycle.
    pub(crate) fn layers(&self) -> Option<Vec<Vec<String>>> {
        let order = toposort(&self.graph, None).ok()?;
        let mut depth: HashMap<NodeIndex, usize> = HashMap::new();
        let mut layers: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for node in order {
            let d = self
                .graph
                .neighbors_directed(node, petgraph::Direction::Incoming)
                .filter_map(|up| depth.get(&up))
                .map(|d| d + 1)
                .max()
                .unwrap_or(0);
            depth.insert(node, d);
            layers
                .entry(d)
                .or_default()
                .push(self.graph[node].to_owned());
        }
        Some(
            layers
                .into_values()
                .map(|mut l| {
                    l.sort();
                    l
                })
                .collect(),
        )
    }
}

pub(crate) fn graph_of(spec: &DagSpec) -> TaskGraph<'_> {
    TaskGraph::new(
        spec.tasks
            .iter()
            .map(|(id, t)| (id.as_str(), t.depends_on.iter().map(String::as_str))),
    )
}

pub(crate) fn layers(spec: &DagSpec) -> Vec<Vec<String>> {
    // A spec from parse_dag is acyclic; a hand-built cyclic one gets no layers.
    graph_of(spec).layers().unwrap_or_default()
}

pub(crate) fn ancestors(spec: &DagSpec, task: &str) -> BTreeSet<String> {
    ancestors_by(task, |t| spec.upstream(t))
}

/// Transitive upstream set of `task`, given a direct-upstream lookup.
pub(crate) fn ancestors_by<'a, F>(task: &str, upstream: F) -> BTreeSet<String>
where
    F: Fn(&str) -> &'a [String],
{
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&String> = upstream(task).iter().collect();
    while let Some(t) = stack.pop() {
        if seen.insert(t.clone()) {
            stack.extend(upstream(t));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &'static [(&'static str, &'static [&'static str])]) -> TaskGraph<'static> {
        TaskGraph::new(edges.iter().map(|(t, d)| (*t, d.iter().copied())))
    }

    #[test]
    fn cycle_path_starts_at_smallest_id_in_run_order() {
        // b depends on a, c on b, a on c: a -> b -> c -> a
        let g = graph(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
        assert_eq!(g.cycles(), vec![vec!["a", "b", "c", "a"]]);
        assert!(g.layers().is_none());
    }

    #[test]
    fn layers_use_longest_path() {
        let g = graph(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"]), ("z", &[])]);
        assert!(g.cycles().is_empty());
        assert_eq!(
            g.layers().unwrap(),
            vec![vec!["a", "z"], vec!["b"], vec!["c"]]
        );
    }
}
