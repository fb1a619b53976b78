"""Class tables: the Cityscapes 19-class table and tables read from COCO categories."""

import numpy as np
import pytest

from copsctl.data.categories import (IGNORE_INDEX, ClassTable, check_categories_match,
                                     cityscapes_class_table)
from copsctl.errors import InputError
from copsctl.panoptic.format import Category


def test_cityscapes_table_matches_cityscapesscripts_labels():
    from cityscapesscripts.helpers.labels import labels

    table = cityscapes_class_table()
    evaluated = [lab for lab in labels if not lab.ignoreInEval]
    assert table.num_classes == 19 == len(evaluated)
    assert sum(table.isthing) == 8
    for lab in evaluated:
        i = table.index_of(lab.id)
        assert i == lab.trainId  # contiguous index is the official train id
        assert table.names[i] == lab.name
        assert table.isthing[i] == lab.hasInstances
        assert table.colors[i] == tuple(lab.color)
    assert table.index_of(7) == 0 and table.index_of(24) == 11 and table.category_id_of(18) == 33


def test_table_from_categories_sorts_and_maps_both_ways():
    cats = [Category(187, "sky", False), Category(1, "person", True), Category(18, "dog", True)]
    table = ClassTable.from_categories(cats)
    assert table.category_ids == (1, 18, 187)
    assert table.thing_mask.tolist() == [True, True, False]
    ids = np.array([[187, 1], [18, 187]])
    idx = table.indices_of(ids)
    assert idx.tolist() == [[2, 0], [1, 2]]
    assert (table.category_ids_of(idx) == ids).all()
    assert 18 in table and 2 not in table
    assert ClassTable.from_json(table.to_json()) == table
    assert table.palette().shape == (3, 3)


def test_unknown_ids_and_bad_tables_are_input_errors():
    table = cityscapes_class_table()
    with pytest.raises(InputError, match="category id 9 is not in the class table"):
        table.index_of(9)
    with pytest.raises(InputError, match=r"category ids \[0, 9\]"):
        table.indices_of(np.array([7, 9, 0]))
    with pytest.raises(InputError, match="class index 19"):
        table.category_id_of(19)
    with pytest.raises(InputError, match="duplicate category ids \\[3\\]"):
        ClassTable.from_categories([Category(3, "a", True), Category(3, "b", False)])
    with pytest.raises(InputError, match="ignore index"):
        ClassTable.from_categories([Category(i + 1, str(i), False) for i in range(IGNORE_INDEX)])
    with pytest.raises(InputError, match="isthing=0, expected 1"):
        check_categories_match(table, [Category(24, "person", False)], "x.json")
    with pytest.raises(InputError, match="x.json: category id 9"):
        check_categories_match(table, [Category(9, "parking", False)], "x.json")
