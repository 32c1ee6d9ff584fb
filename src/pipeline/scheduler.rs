//! The order and the pace of a run's chunks.
//!
//! Parsed chunks finish in any order, on any thread; de-duplication must see them in input
//! order. The [`Schedule`] is the reorder buffer between the two: each input's chunks, then
//! its end, come out in input order, whatever order they were posted in. It is also the
//! back-pressure on the readers: a reader may not run more than [`limit`] chunks
//! ahead of the folds, and past that it is *parked* (put aside, its thread free to parse) until
//! chunks are done with. Memory is therefore a few chunks per core, however large the inputs.
//!
//! The schedule holds no thread and never waits: the pipeline asks it, under one lock, what to
//! do next, and does it outside the lock.

use std::collections::BTreeMap;

/// What a reader hands the consumer, in input order: the input's chunks, then its end.
#[derive(Debug, PartialEq)]
pub enum Piece<C, E> {
    Chunk(C),
    End(E),
}

/// A reader to start: a new input to open, or a parked one to resume.
#[derive(Debug, PartialEq)]
pub enum Start<R> {
    Open(usize),
    Resume(R),
}

/// The most chunks read and not yet done with: two per thread and two more, so that every core
/// has a chunk to parse while the next are read. It also sizes the pools of buffers.
pub fn limit(threads: usize) -> usize {
    2 * threads.max(1) + 2
}

/// Which chunks are read, parsed and waiting, and which reader may read on. `C` is a parsed
/// chunk, `E` an input's end, `R` a parked reader.
pub struct Schedule<C, E, R> {
    /// Parsed chunks and ends of input, waiting for their turn, by (input, chunk).
    ready: BTreeMap<(usize, u32), Piece<C, E>>,
    /// The piece the consumer takes next.
    next: (usize, u32),
    /// Chunks read and not yet done with, per input and in all.
    pending: Vec<u32>,
    outstanding: usize,
    /// Inputs opened so far (they are opened in input order), and those not yet ended.
    opened: usize,
    open_readers: usize,
    max_readers: usize,
    /// Readers waiting for the consumer or the folds to catch up, with their input.
    parked: Vec<(usize, R)>,
    /// The run failed: read no further, hand out nothing more.
    aborted: bool,
}

impl<C, E, R> Schedule<C, E, R> {
    /// The schedule of `inputs` inputs read by up to `threads` readers at once.
    pub fn new(inputs: usize, threads: usize) -> Schedule<C, E, R> {
        Schedule {
            ready: BTreeMap::new(),
            next: (0, 0),
            pending: vec![0; inputs],
            outstanding: 0,
            opened: 0,
            open_readers: 0,
            max_readers: threads.max(1),
            parked: Vec::new(),
            aborted: false,
        }
    }

    /// Whether input `i`'s reader may read another chunk. The input the consumer waits on may
    /// always have `limit` chunks of its own in flight, so that it can never be starved by
    /// inputs after it; those read only while the total is under the limit.
    fn may_read(&self, i: usize) -> bool {
        let most = limit(self.max_readers);
        !self.aborted
            && (self.pending[i] as usize) < most
            && (i == self.next.0 || self.outstanding < most)
    }

    /// Asks to read a chunk of input `i`. If it may, the chunk is counted as pending and the
    /// reader comes back; if not, the reader is parked (or, once the run failed, dropped).
    pub fn admit(&mut self, i: usize, reader: R) -> Option<R> {
        if self.aborted {
            return None;
        }
        if !self.may_read(i) {
            self.parked.push((i, reader));
            return None;
        }
        self.outstanding += 1;
        self.pending[i] += 1;
        Some(reader)
    }

    /// A chunk of input `i` admitted by [`Schedule::admit`] is done with: folded, or never
    /// read because the input ended. Readers may read again: call [`Schedule::starts`].
    pub fn chunk_done(&mut self, i: usize) {
        self.outstanding -= 1;
        self.pending[i] -= 1;
    }

    /// Input `i`'s reader has ended after `chunks` chunks; its end waits for its turn like a
    /// chunk. Returns the readers to start now.
    pub fn end(&mut self, i: usize, chunks: u32, end: E) -> Vec<Start<R>> {
        self.open_readers -= 1;
        self.ready.insert((i, chunks), Piece::End(end));
        self.starts()
    }

    /// Puts chunk `seq` of input `i`, parsed, in the reorder buffer.
    pub fn post(&mut self, i: usize, seq: u32, chunk: C) {
        self.ready.insert((i, seq), Piece::Chunk(chunk));
    }

    /// Readers to start now: parked ones that may read again, and new inputs in order, a few
    /// ahead of the consumer at most.
    pub fn starts(&mut self) -> Vec<Start<R>> {
        let mut starts = Vec::new();
        if self.aborted {
            return starts;
        }
        let mut still = Vec::new();
        for (i, r) in std::mem::take(&mut self.parked) {
            if self.may_read(i) {
                starts.push(Start::Resume(r));
            } else {
                still.push((i, r));
            }
        }
        self.parked = still;
        while self.opened < self.pending.len()
            && (self.open_readers < self.max_readers || self.opened == self.next.0)
            && self.opened <= self.next.0 + self.max_readers
        {
            starts.push(Start::Open(self.opened));
            self.opened += 1;
            self.open_readers += 1;
        }
        starts
    }

    /// Takes the next piece in input order, with its input, if it is ready (none once the
    /// run failed). A chunk stays pending until [`Schedule::chunk_done`].
    pub fn take_next(&mut self) -> Option<(usize, Piece<C, E>)> {
        if self.aborted {
            self.ready.clear();
            return None;
        }
        let at = self.next;
        let piece = self.ready.remove(&at)?;
        match &piece {
            Piece::Chunk(_) => self.next.1 += 1,
            Piece::End(_) => self.next = (self.next.0 + 1, 0),
        }
        Some((at.0, piece))
    }

    /// Stops the run: nothing more is read or handed out.
    pub fn abort(&mut self) {
        self.aborted = true;
    }

    /// Whether the run was stopped.
    pub fn aborted(&self) -> bool {
        self.aborted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks are `&str`, ends `()`, readers their input's number.
    type Test = Schedule<&'static str, (), usize>;

    fn opens(starts: &[Start<usize>]) -> Vec<usize> {
        starts
            .iter()
            .filter_map(|s| match s {
                Start::Open(i) => Some(*i),
                Start::Resume(_) => None,
            })
            .collect()
    }

    /// Whatever order pieces are posted in, they come out by input, then by chunk, each
    /// input's end after its chunks; a gap holds back everything after it.
    #[test]
    fn pieces_come_out_in_input_order() {
        let mut s = Test::new(2, 2);
        assert_eq!(opens(&s.starts()), [0, 1]);
        s.post(1, 0, "b0");
        s.post(0, 1, "a1");
        assert_eq!(s.take_next(), None, "chunk 0 of input 0 is not there yet");
        s.post(0, 0, "a0");
        assert!(s.end(1, 1, ()).is_empty());
        assert_eq!(s.take_next(), Some((0, Piece::Chunk("a0"))));
        assert_eq!(s.take_next(), Some((0, Piece::Chunk("a1"))));
        assert_eq!(s.take_next(), None, "input 0 has not ended");
        s.end(0, 2, ());
        assert_eq!(s.take_next(), Some((0, Piece::End(()))));
        assert_eq!(s.take_next(), Some((1, Piece::Chunk("b0"))));
        assert_eq!(s.take_next(), Some((1, Piece::End(()))));
        assert_eq!(s.take_next(), None);
    }

    /// Inputs open in order, at most one reader per thread and at most that many inputs
    /// past the one the consumer waits on; the consumer's own input always opens.
    #[test]
    fn inputs_open_in_order_one_reader_per_thread() {
        let mut s = Test::new(5, 2);
        assert_eq!(opens(&s.starts()), [0, 1]);
        assert!(s.starts().is_empty(), "two readers are open");
        // Input 1 ends first: its reader's place goes to input 2.
        assert_eq!(opens(&s.end(1, 0, ())), [2]);
        // Input 2 ends too: input 3 would be more than two inputs past the consumer's 0.
        assert!(opens(&s.end(2, 0, ())).is_empty());
        s.end(0, 0, ());
        for _ in 0..3 {
            assert!(matches!(s.take_next(), Some((_, Piece::End(())))));
        }
        // The consumer now waits on input 3: it opens, and input 4 with it.
        assert_eq!(opens(&s.starts()), [3, 4]);
    }

    /// A reader past the limit parks; it resumes once its chunks are done with. The input
    /// the consumer waits on may read its own `limit` chunks even when later inputs hold the
    /// whole limit, so it is never starved.
    #[test]
    fn readers_park_at_the_limit_and_resume_when_chunks_are_done() {
        let most = limit(1);
        assert_eq!(most, 4);
        let mut s = Test::new(2, 1);
        assert_eq!(opens(&s.starts()), [0]);
        // Input 1 opens beside input 0 (it is within one input of the consumer's).
        assert_eq!(opens(&s.end(0, 0, ())), [1]);
        let mut s = Test::new(2, 1);
        s.starts();
        for _ in 0..most {
            assert_eq!(s.admit(0, 0), Some(0));
        }
        assert_eq!(s.admit(0, 0), None, "the limit is reached: parked");
        assert!(s.starts().is_empty(), "still at the limit");
        s.chunk_done(0);
        assert_eq!(s.starts(), [Start::Resume(0)]);

        // Input 1 is not the consumer's: it reads only while the total is under the limit.
        let mut s = Test::new(2, 2);
        assert_eq!(opens(&s.starts()), [0, 1]);
        let most = limit(2);
        for _ in 0..most {
            assert_eq!(s.admit(1, 1), Some(1));
        }
        assert_eq!(s.admit(1, 1), None, "input 1 is parked");
        for _ in 0..most {
            assert_eq!(s.admit(0, 0), Some(0), "the consumer's input reads on");
        }
        assert_eq!(s.admit(0, 0), None, "its own limit holds");
        // Input 0's chunks done with: input 0 may read again, input 1 not yet (the total is
        // still the limit, its own chunks).
        s.chunk_done(0);
        assert_eq!(s.starts(), [Start::Resume(0)]);
        s.chunk_done(1);
        assert!(
            s.starts().is_empty(),
            "input 1 is at the limit with input 0's chunks"
        );
        for _ in 1..most {
            s.chunk_done(0);
        }
        assert_eq!(s.starts(), [Start::Resume(1)]);
    }

    /// Once aborted, nothing is read, started or handed out, and what waits is dropped.
    #[test]
    fn an_aborted_run_reads_and_hands_out_nothing() {
        let mut s = Test::new(3, 2);
        s.starts();
        s.post(0, 0, "a0");
        s.abort();
        assert!(s.aborted());
        assert_eq!(s.admit(0, 0), None);
        assert!(s.starts().is_empty());
        assert_eq!(s.take_next(), None);
        assert!(s.ready.is_empty() && s.parked.is_empty());
    }
}
