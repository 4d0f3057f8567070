"""Faces: Face Mesh landmarks, index sets and crop boxes (`landmarks`), sketches drawn
from landmarks (`sketch`), and pasting a generated face back into its frame (`paste`)."""
