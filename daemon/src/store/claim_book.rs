//! The claims a SQLite store holds in memory.
//!
//! A SQLite file has one daemon (`SqliteStore` holds a lock beside it), so a
//! claim need not be written to its row: nobody else could take the row
//! over. A claim is an entry here, and its row stays `scheduled` (or
//! `retrying`) until its outcome is recorded, which saves writing every
//! claimed row and its index entries twice (claim, then outcome) on the one
//! writer. What the file keeps of a claim is a *mark* per claimed batch
//! (`claim_marks`, one row listing the batch's ids), written before any of
//! the batch is sent; once every claim of the batch has its outcome, the
//! next claim's write (or a clean stop) deletes it. After a crash the next
//! start counts each still pending delivery of a leftover mark as an
//! attempt, so a delivery that keeps crashing the daemon is parked after
//! `max_claims` like a leased one; a delivery of such a batch whose retry
//! was recorded before the crash counts one attempt too many.
//!
//! Everything that reads pending rows for the scheduler leaves the book's
//! entries out (the claim's candidates, the next due time, the backlog).

use std::collections::HashMap;

/// The ids claimed in memory, each with its owner and the mark of its
/// batch, and how many claims of each mark still await their outcome.
#[derive(Debug, Default)]
pub(crate) struct ClaimBook {
    claims: HashMap<String, Entry>,
    open: HashMap<i64, usize>,
    /// Marks none of whose claims is open any more (a batch whose claims
    /// all turned out unclaimable), deleted with the next outcomes.
    finished: Vec<i64>,
    last_mark: i64,
}

#[derive(Debug)]
struct Entry {
    owner: String,
    mark: i64,
}

impl ClaimBook {
    /// A book whose marks are numbered after `last_mark` (the file's last).
    pub fn after(last_mark: i64) -> ClaimBook {
        ClaimBook {
            last_mark,
            ..ClaimBook::default()
        }
    }

    /// The number of the next batch's mark.
    pub fn next_mark(&mut self) -> i64 {
        self.last_mark += 1;
        self.last_mark
    }

    /// Records `ids` as claimed by `owner` under `mark` (written to the
    /// file); an id already held is left to its claim.
    pub fn hold<'a>(&mut self, owner: &str, mark: i64, ids: impl IntoIterator<Item = &'a str>) {
        let mut count = 0;
        for id in ids {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.claims.entry(id.to_string())
            {
                slot.insert(Entry {
                    owner: owner.to_string(),
                    mark,
                });
                count += 1;
            }
        }
        if count == 0 {
            self.finished.push(mark);
        } else {
            self.open.insert(mark, count);
        }
    }

    /// Whether `owner` holds `id` here.
    pub fn holds(&self, owner: &str, id: &str) -> bool {
        self.claims
            .get(id)
            .is_some_and(|entry| entry.owner == owner)
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Every id held, as a JSON array (the statements' exclusion list).
    pub fn ids_json(&self) -> String {
        let ids: Vec<&str> = self.claims.keys().map(String::as_str).collect();
        serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_string())
    }

    /// `owner`'s ids.
    pub fn ids_of(&self, owner: &str) -> Vec<String> {
        self.claims
            .iter()
            .filter(|(_, entry)| entry.owner == owner)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The marks that end once the claims `ids` (held by `owner`) end, and
    /// those ended already: to be deleted in the same transaction as what
    /// ends those claims. Changes nothing; [`ClaimBook::end`] and
    /// [`ClaimBook::forget`] do, once that transaction committed.
    pub fn marks_ending(&self, owner: &str, ids: &[&str]) -> Vec<i64> {
        let mut ending: HashMap<i64, usize> = HashMap::new();
        for id in ids {
            if let Some(entry) = self.claims.get(*id).filter(|entry| entry.owner == owner) {
                *ending.entry(entry.mark).or_default() += 1;
            }
        }
        let mut marks: Vec<i64> = ending
            .into_iter()
            .filter(|(mark, n)| self.open.get(mark) == Some(n))
            .map(|(mark, _)| mark)
            .chain(self.finished.iter().copied())
            .collect();
        marks.sort_unstable();
        marks
    }

    /// The marks none of whose claims is open any more: to be deleted with
    /// the next write that can take them.
    pub fn finished(&self) -> Vec<i64> {
        self.finished.clone()
    }

    /// Ends `owner`'s claims among `ids` (their outcomes are recorded, or
    /// they were released); a mark whose claims have all ended joins
    /// [`ClaimBook::finished`].
    pub fn end(&mut self, owner: &str, ids: &[&str]) {
        for id in ids {
            if self.holds(owner, id)
                && let Some(entry) = self.claims.remove(*id)
                && let Some(open) = self.open.get_mut(&entry.mark)
            {
                *open -= 1;
                if *open == 0 {
                    self.open.remove(&entry.mark);
                    self.finished.push(entry.mark);
                }
            }
        }
    }

    /// Forgets marks deleted from the file.
    pub fn forget(&mut self, deleted: &[i64]) {
        self.finished.retain(|mark| !deleted.contains(mark));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_ends_with_the_last_claim_of_its_batch() {
        let mut book = ClaimBook::after(7);
        let (first, second) = (book.next_mark(), book.next_mark());
        assert_eq!((first, second), (8, 9));
        book.hold("a", first, ["d1", "d2"]);
        book.hold("a", second, ["d3", "d1"]);
        assert!(book.holds("a", "d1") && !book.holds("b", "d1"));
        assert!(book.holds("a", "d3") && !book.holds("a", "d4"));

        // Only the owner's claims end; the first batch is not over with d1.
        assert_eq!(book.marks_ending("b", &["d1", "d2"]), Vec::<i64>::new());
        assert_eq!(book.marks_ending("a", &["d1"]), Vec::<i64>::new());
        book.end("a", &["d1"]);
        assert_eq!(book.marks_ending("a", &["d2", "d3"]), vec![first, second]);
        book.end("a", &["d2", "d3"]);
        assert_eq!(book.finished(), vec![first, second]);
        book.forget(&[first, second]);
        assert!(book.is_empty());
        assert_eq!(book.finished(), Vec::<i64>::new());
    }

    #[test]
    fn a_batch_with_nothing_claimed_is_deleted_with_the_next_outcomes() {
        let mut book = ClaimBook::after(0);
        let mark = book.next_mark();
        book.hold("a", mark, []);
        assert_eq!(book.finished(), vec![mark]);
        // Not deleted (that transaction failed): still to delete.
        book.forget(&[]);
        assert_eq!(book.finished(), vec![mark]);
        book.forget(&[mark]);
        assert_eq!(book.finished(), Vec::<i64>::new());
    }

    #[test]
    fn the_exclusion_list_names_every_held_id() {
        let mut book = ClaimBook::after(0);
        assert_eq!(book.ids_json(), "[]");
        let mark = book.next_mark();
        book.hold("a", mark, ["d1"]);
        let mark = book.next_mark();
        book.hold("b", mark, ["d2"]);
        let mut ids: Vec<String> = serde_json::from_str(&book.ids_json()).expect("json");
        ids.sort();
        assert_eq!(ids, ["d1", "d2"]);
        assert_eq!(book.ids_of("b"), ["d2"]);
    }
}
