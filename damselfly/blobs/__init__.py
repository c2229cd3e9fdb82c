"""blobs"""
