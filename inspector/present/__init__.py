"""What a person looks at: plots, the HTML report, the demo."""
