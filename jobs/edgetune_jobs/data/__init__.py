"""Datasets: fetching and preparing them (VIA/COCO), the generated set, COCO evaluation."""
