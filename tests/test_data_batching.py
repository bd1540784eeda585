"""Tests of rnnreg_jax.data.batching: shapes, shifts, continuity, shuffling, shards, resume."""

import numpy as np
import pytest
from absl.testing import parameterized

from rnnreg_jax.data import DataError
from rnnreg_jax.data.batching import (
    ArrayBatches,
    ContiguousStreams,
    ShuffledWindows,
    eval_stream,
    host_rows,
)

ONE = {"process_index": 0, "process_count": 1}


def test_host_rows_partition_and_errors():
    assert [host_rows(8, i, 4) for i in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(DataError, match="not a positive multiple"):
        host_rows(10, 0, 4)
    with pytest.raises(DataError, match=r"^Process index 4 is not in \[0, 4\)\.$"):
        host_rows(8, 4, 4)
    assert host_rows(6) == (0, 6)  # defaults from jax: one process here


class ContiguousTest(parameterized.TestCase):
    @parameterized.parameters((103, 4, 5), (100, 2, 7), (50, 1, 3))
    def test_zaremba_streams(self, n, b, t):
        data = np.arange(n)
        it = ContiguousStreams(data, b, t, **ONE)
        length = n // b
        self.assertEqual(it.num_batches, (length - 1) // t)
        streams = data[: b * length].reshape(b, -1)
        batches = list(it.iterate())
        self.assertLen(batches, it.num_batches)
        for k, batch in enumerate(batches):
            self.assertEqual(batch["inputs"].shape, (b, t))
            self.assertEqual(batch["inputs"].dtype, np.int32)
            np.testing.assert_array_equal(batch["inputs"], streams[:, k * t : k * t + t])
            np.testing.assert_array_equal(batch["targets"], streams[:, k * t + 1 : k * t + t + 1])
            if k:  # stream continuity: window k starts where window k-1 ended
                np.testing.assert_array_equal(
                    batches[k - 1]["inputs"][:, -1] + 1, batch["inputs"][:, 0]
                )
                np.testing.assert_array_equal(
                    batches[k - 1]["targets"][:, -1], batch["inputs"][:, 0]
                )

    def test_host_shards_are_slices_of_streams(self):
        data = np.arange(1000)
        full = ContiguousStreams(data, 8, 10, **ONE)
        for k in (0, 5):
            parts = [
                ContiguousStreams(data, 8, 10, process_index=i, process_count=4).get_batch(0, k)
                for i in range(4)
            ]
            for key in ("inputs", "targets"):
                np.testing.assert_array_equal(
                    np.concatenate([p[key] for p in parts]), full.get_batch(0, k)[key]
                )

    def test_resume_equals_continuing(self):
        it = ContiguousStreams(np.arange(500), 4, 6, **ONE)
        all_batches = list(it.iterate(epoch=2))
        resumed = list(it.iterate(epoch=2, start_batch=7))
        for a, b in zip(all_batches[7:], resumed, strict=True):
            np.testing.assert_array_equal(a["inputs"], b["inputs"])

    def test_eval_stream_covers_every_target_once(self):
        data = np.arange(1, 24)  # 23 tokens -> 22 targets, T=5 -> 5 windows, last padded
        it = eval_stream(data, 5)
        self.assertEqual(it.num_batches, 5)
        batches = list(it.iterate())
        targets = np.concatenate([b["targets"][0][b["weights"][0] > 0] for b in batches])
        np.testing.assert_array_equal(targets, data[1:])
        self.assertEqual(batches[-1]["inputs"].shape, (1, 5))
        np.testing.assert_array_equal(batches[-1]["weights"][0], [1, 1, 0, 0, 0])

    def test_too_short_is_data_error(self):
        with self.assertRaises(DataError):
            ContiguousStreams(np.arange(10), 8, 5, **ONE)


class ShuffledWindowsTest(parameterized.TestCase):
    @parameterized.parameters((None,), (3,), (6,))
    def test_windows_shift_and_stride(self, stride):
        data = np.arange(200)
        it = ShuffledWindows(data, 4, 5, stride=stride, seed=1, **ONE)
        s = 5 if stride is None else stride
        self.assertEqual(it.num_windows, (200 - 1 - 5) // s + 1)
        seen = []
        for batch in it.iterate(0):
            self.assertEqual(batch["inputs"].shape, (4, 5))
            np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
            self.assertTrue(np.all(batch["inputs"][:, 0] % s == 0))
            seen.extend(batch["inputs"][:, 0] // s)
        # every full batch of 4 windows, the incomplete last one dropped
        self.assertLen(seen, it.num_windows // 4 * 4)
        self.assertLen(set(seen), len(seen))  # each window at most once per epoch

    def test_non_overlapping_default_predicts_each_token_once(self):
        data = np.arange(41)  # 40 targets, T=5, stride 5 -> 8 windows
        it = ShuffledWindows(data, 8, 5, shuffle=False, **ONE)
        targets = np.sort(it.get_batch(0, 0)["targets"].ravel())
        np.testing.assert_array_equal(targets, data[1:])

    def test_shuffle_deterministic_per_seed_and_epoch(self):
        data = np.arange(1000)
        a = ShuffledWindows(data, 4, 5, seed=3, **ONE)
        b = ShuffledWindows(data, 4, 5, seed=3, **ONE)
        c = ShuffledWindows(data, 4, 5, seed=4, **ONE)
        np.testing.assert_array_equal(a.get_batch(1, 2)["inputs"], b.get_batch(1, 2)["inputs"])
        self.assertFalse(np.array_equal(a.window_order(0), a.window_order(1)))
        self.assertFalse(np.array_equal(a.window_order(0), c.window_order(0)))

    def test_host_shards_partition_global_batch(self):
        data = np.arange(3000)
        full = ShuffledWindows(data, 8, 7, seed=0, **ONE).get_batch(3, 4)
        parts = [
            ShuffledWindows(data, 8, 7, seed=0, process_index=i, process_count=2).get_batch(3, 4)
            for i in range(2)
        ]
        np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), full["inputs"])

    @parameterized.parameters((5,), (3,))
    def test_random_offset_shifts_every_window_of_an_epoch(self, stride):
        """The zoneout authors' `augment`: one shift in [0, stride) per epoch, as many
        windows in every epoch, every token index in range."""
        data = np.arange(203)
        it = ShuffledWindows(data, 4, 5, stride=stride, seed=2, random_offset=True, **ONE)
        self.assertEqual(it.num_windows, (203 - 1 - (stride - 1) - 5) // stride + 1)
        offsets = set()
        for epoch in range(30):
            offset = it.start_offset(epoch)
            self.assertTrue(0 <= offset < stride)
            offsets.add(offset)
            starts = []
            for batch in it.iterate(epoch):
                np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
                starts.extend(batch["inputs"][:, 0])
            self.assertTrue(np.all((np.array(starts) - offset) % stride == 0))
            self.assertLen(set(starts), len(starts))
        self.assertEqual(offsets, set(range(stride)))  # every shift occurs
        plain = ShuffledWindows(data, 4, 5, stride=stride, seed=2, **ONE)
        self.assertEqual({plain.start_offset(e) for e in range(30)}, {0})

    def test_random_offset_is_a_pure_function_of_seed_and_epoch(self):
        data = np.arange(1000)
        a = ShuffledWindows(data, 4, 5, seed=3, random_offset=True, **ONE)
        b = ShuffledWindows(data, 4, 5, seed=3, random_offset=True, **ONE)
        for epoch in (0, 7):  # a fresh iterator (a resumed run) reads the same batches
            np.testing.assert_array_equal(a.get_batch(epoch, 5)["inputs"],
                                          b.get_batch(epoch, 5)["inputs"])
        cont = list(a.iterate(epoch=4))[10:]
        resumed = list(b.iterate(epoch=4, start_batch=10))
        for x, y in zip(cont, resumed, strict=True):
            np.testing.assert_array_equal(x["inputs"], y["inputs"])
        c = ShuffledWindows(data, 4, 5, seed=4, random_offset=True, **ONE)
        self.assertNotEqual([a.start_offset(e) for e in range(10)],
                            [c.start_offset(e) for e in range(10)])

    def test_resume_equals_continuing(self):
        it = ShuffledWindows(np.arange(2000), 4, 5, seed=9, **ONE)
        cont = list(it.iterate(epoch=4))[10:]
        resumed = list(it.iterate(epoch=4, start_batch=10))
        for a, b in zip(cont, resumed, strict=True):
            np.testing.assert_array_equal(a["targets"], b["targets"])


class ArrayBatchesTest(parameterized.TestCase):
    def arrays(self, n=23):
        return {"inputs": np.arange(n * 2).reshape(n, 2), "labels": np.arange(n)}

    def test_epoch_covers_examples_once(self):
        it = ArrayBatches(self.arrays(), 5, seed=2, **ONE)
        self.assertEqual(it.num_batches, 4)
        labels = np.concatenate([b["labels"] for b in it.iterate(1)])
        self.assertLen(set(labels.tolist()), 20)
        np.testing.assert_array_equal(
            np.concatenate([b["inputs"][:, 0] // 2 for b in it.iterate(1)]), labels
        )

    def test_no_drop_remainder_pads_with_weights(self):
        it = ArrayBatches(self.arrays(), 5, shuffle=False, drop_remainder=False, **ONE)
        self.assertEqual(it.num_batches, 5)
        last = it.get_batch(0, 4)
        np.testing.assert_array_equal(last["labels"], [20, 21, 22, 0, 0])
        np.testing.assert_array_equal(last["weights"], [1, 1, 1, 0, 0])

    def test_deterministic_and_epochs_differ(self):
        a = ArrayBatches(self.arrays(100), 10, seed=5, **ONE)
        b = ArrayBatches(self.arrays(100), 10, seed=5, **ONE)
        np.testing.assert_array_equal(a.get_batch(2, 3)["labels"], b.get_batch(2, 3)["labels"])
        self.assertFalse(np.array_equal(a.order(0), a.order(1)))

    @parameterized.parameters(True, False)
    def test_host_shards_partition(self, drop):
        full = ArrayBatches(self.arrays(), 6, seed=1, drop_remainder=drop, **ONE)
        for k in range(full.num_batches):
            parts = [
                ArrayBatches(
                    self.arrays(), 6, seed=1, drop_remainder=drop, process_index=i, process_count=3
                ).get_batch(7, k)
                for i in range(3)
            ]
            for key in full.get_batch(7, k):
                np.testing.assert_array_equal(
                    np.concatenate([p[key] for p in parts]), full.get_batch(7, k)[key]
                )

    def test_indivisible_batch_is_data_error(self):
        with pytest.raises(DataError, match="divisible"):
            ArrayBatches(self.arrays(), 5, process_index=0, process_count=2)

    def test_resume(self):
        it = ArrayBatches(self.arrays(100), 10, seed=5, **ONE)
        cont = list(it.iterate(3))[4:]
        for a, b in zip(cont, it.iterate(3, start_batch=4), strict=True):
            np.testing.assert_array_equal(a["labels"], b["labels"])
